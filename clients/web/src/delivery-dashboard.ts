// The admin dashboard's delivery section: GetDeliveryStats over a chosen window (1 h, 24 h, 7 days) as a chart of
// sends and outcomes per bucket, a chart of time to delivered (p50/p95), the window's totals, the top error codes
// and each sender's backlog. Live events ask for a refresh; it is fetched at most once every 5 s (the last request
// in a burst is always answered by a trailing fetch). Each chart has a visually-hidden table of its numbers.
import { create } from "@bufbuild/protobuf";
import { DurationSchema } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { errorCode, type SmsClient } from "./api.js";
import { TimeChart } from "./delivery-charts.js";
import { h, userText } from "./dom.js";
import { durationSeconds, humanAge, int, tsMillis } from "./format.js";
import type { DeliveryBucket, GetDeliveryStatsResponse, SenderBacklog } from "./gen/sms/v1/sms_pb.js";
import "./dashboard.css";

export const DELIVERY_MIN_INTERVAL_MS = 5000;

interface WindowChoice {
  key: string;
  label: string;
  /** "last hour", for summaries. */
  phrase: string;
  seconds: number;
  bucketSeconds: number;
  bucketPhrase: string;
}

const WINDOWS: readonly WindowChoice[] = [
  { key: "1h", label: "1 hour", phrase: "last hour", seconds: 3600, bucketSeconds: 300, bucketPhrase: "5-minute" },
  { key: "24h", label: "24 hours", phrase: "last 24 hours", seconds: 86400, bucketSeconds: 3600, bucketPhrase: "hourly" },
  { key: "7d", label: "7 days", phrase: "last 7 days", seconds: 7 * 86400, bucketSeconds: 6 * 3600, bucketPhrase: "6-hour" },
];
const DEFAULT_WINDOW = "24h";

type Outcome = "queued" | "sent" | "delivered" | "undelivered" | "failed" | "canceled";
const OUTCOMES: readonly { key: Outcome; label: string; color: string }[] = [
  { key: "queued", label: "Queued", color: "#6b7280" },
  { key: "sent", label: "Sent", color: "#2563eb" },
  { key: "delivered", label: "Delivered", color: "#047857" },
  { key: "undelivered", label: "Undelivered", color: "#d97706" },
  { key: "failed", label: "Failed", color: "#b91c1c" },
  { key: "canceled", label: "Canceled", color: "#7c3aed" },
];

type Totals = Record<Outcome, number>;

const bucketFmt = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });

/** A time to delivered: "850 ms", "4.2 s", "3 min 10 s"; "—" for none. */
export function latency(seconds: number): string {
  if (!(seconds > 0)) return "—";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds < 10 ? Number(seconds.toFixed(1)) : Math.round(seconds)} s`;
  return humanAge(seconds);
}

function count(b: DeliveryBucket, key: Outcome): number {
  return Number(b[key]);
}

export class DeliveryDashboard {
  readonly el: HTMLElement;
  private readonly select: HTMLSelectElement;
  private readonly status: HTMLElement;
  private readonly totalsEl: HTMLElement;
  private readonly outcomesChart: TimeChart;
  private readonly latencyChart: TimeChart;
  private readonly outcomesTable: HTMLTableElement;
  private readonly latencyTable: HTMLTableElement;
  private readonly errorBody: HTMLTableSectionElement;
  private readonly senderBody: HTMLTableSectionElement;

  private windowKey = DEFAULT_WINDOW;
  private stats: GetDeliveryStatsResponse | null = null;
  private statsWindow = DEFAULT_WINDOW;
  private fetchedAt = 0;
  /** Senders from whichever answer (this one or GetQueueStats) came last. */
  private senders: SenderBacklog[] = [];
  private error = "";
  private visible = false;
  private dirty = true;
  private inFlight = false;
  private lastFetch = 0;
  private timer = 0;
  private seq = 0;
  private reported = false;

  constructor(
    private readonly client: SmsClient,
    private readonly onError: (err: unknown) => void,
  ) {
    this.select = h(
      "select",
      {
        class: "input dv-window",
        "data-testid": "delivery-window",
        "aria-label": "Window",
        onchange: () => this.chooseWindow(this.select.value),
      },
      WINDOWS.map((w) => h("option", { value: w.key, selected: w.key === DEFAULT_WINDOW }, w.label)),
    );
    this.select.value = DEFAULT_WINDOW;
    this.status = h("span", { class: "dash-updated", "data-testid": "delivery-updated", role: "status" });
    this.totalsEl = h("div", { class: "dv-totals", "data-testid": "delivery-totals" });

    this.outcomesChart = new TimeChart({
      testid: "delivery-chart-outcomes",
      series: OUTCOMES.map((o) => ({ label: o.label, stroke: o.color, dash: o.key === "queued" ? [4, 3] : undefined })),
      formatY: (v) => int(Math.round(v)),
      integers: true,
    });
    this.latencyChart = new TimeChart({
      testid: "delivery-chart-latency",
      series: [
        { label: "p50", stroke: "#2563eb" },
        { label: "p95", stroke: "#b91c1c", dash: [5, 3] },
      ],
      formatY: (v) => (v > 0 ? latency(v) : "0"),
    });
    // A table ignores a 1 px width: its 1 px, overflow-hidden box is a div around it.
    this.outcomesTable = h("table", { "data-testid": "delivery-table-outcomes" });
    this.latencyTable = h("table", { "data-testid": "delivery-table-latency" });
    this.errorBody = h("tbody");
    this.senderBody = h("tbody");

    const card = (title: string, ...children: Node[]) =>
      h("section", { class: "dv-card" }, h("h3", { class: "dv-card-title" }, title), ...children);

    this.el = h(
      "section",
      { class: "dv", "data-testid": "delivery-dashboard", "aria-label": "Delivery" },
      h(
        "div",
        { class: "dv-head" },
        h("h2", null, "Delivery"),
        this.status,
        h("label", { class: "dv-window-label" }, h("span", null, "Window"), this.select),
      ),
      this.totalsEl,
      h(
        "div",
        { class: "dv-grid" },
        card("Sends and outcomes", this.outcomesChart.el, h("div", { class: "visually-hidden" }, this.outcomesTable)),
        card("Time to delivered", this.latencyChart.el, h("div", { class: "visually-hidden" }, this.latencyTable)),
        card(
          "Top errors",
          h(
            "div",
            { class: "dv-table-wrap" },
            h(
              "table",
              { class: "dv-table", "data-testid": "error-table" },
              h("caption", { class: "visually-hidden" }, "Most frequent error codes of failed and undelivered messages in the window"),
              h(
                "thead",
                null,
                h("tr", null, h("th", { scope: "col" }, "Code"), h("th", { scope: "col" }, "Description"), h("th", { scope: "col", class: "num" }, "Count")),
              ),
              this.errorBody,
            ),
          ),
        ),
        card(
          "Sender backlog",
          h(
            "div",
            { class: "dv-table-wrap" },
            h(
              "table",
              { class: "dv-table", "data-testid": "sender-backlog-table" },
              h("caption", { class: "visually-hidden" }, "Messages waiting per sender and the time to drain them"),
              h(
                "thead",
                null,
                h(
                  "tr",
                  null,
                  h("th", { scope: "col" }, "Sender"),
                  h("th", { scope: "col", class: "num" }, "Messages"),
                  h("th", { scope: "col", class: "num dv-seg" }, "Segments"),
                  h("th", { scope: "col", class: "num" }, "Drains in"),
                ),
              ),
              this.senderBody,
            ),
          ),
        ),
      ),
    );
    this.render();
  }

  show(): void {
    this.visible = true;
    if (this.dirty) this.bump();
  }

  hide(): void {
    this.visible = false;
  }

  destroy(): void {
    this.hide();
    window.clearTimeout(this.timer);
    this.timer = 0;
    this.outcomesChart.destroy();
    this.latencyChart.destroy();
  }

  /** Something changed (a live event): refresh, at most once per DELIVERY_MIN_INTERVAL_MS, the last one trailing. */
  bump(): void {
    this.dirty = true;
    if (!this.visible || this.timer || this.inFlight) return;
    const wait = Math.max(0, this.lastFetch + DELIVERY_MIN_INTERVAL_MS - Date.now());
    this.timer = window.setTimeout(() => {
      this.timer = 0;
      void this.fetch();
    }, wait);
  }

  /** The Refresh button or a new window: fetch now. */
  refreshNow(): void {
    window.clearTimeout(this.timer);
    this.timer = 0;
    void this.fetch(true);
  }

  /** GetQueueStats' senders, fresher than the last GetDeliveryStats' between its (slower) refreshes. */
  queueSenders(senders: SenderBacklog[]): void {
    this.senders = senders;
    this.renderSenders();
  }

  private chooseWindow(key: string): void {
    if (!WINDOWS.some((w) => w.key === key) || key === this.windowKey) return;
    this.windowKey = key;
    this.refreshNow();
  }

  private choice(key = this.windowKey): WindowChoice {
    return WINDOWS.find((w) => w.key === key) ?? WINDOWS[1];
  }

  private async fetch(force = false): Promise<void> {
    if (this.inFlight && !force) {
      this.dirty = true;
      return;
    }
    const seq = ++this.seq;
    const key = this.windowKey;
    const w = this.choice(key);
    this.inFlight = true;
    this.dirty = false;
    this.lastFetch = Date.now();
    try {
      const res = await this.client.getDeliveryStats({
        window: create(DurationSchema, { seconds: BigInt(w.seconds) }),
        bucket: create(DurationSchema, { seconds: BigInt(w.bucketSeconds) }),
      });
      if (seq !== this.seq) return; // a newer request (another window) is on its way
      this.stats = res;
      this.statsWindow = key;
      this.senders = res.senders;
      this.fetchedAt = Date.now();
      this.error = "";
      this.reported = false;
    } catch (err) {
      if (seq !== this.seq) return;
      const code = errorCode(err);
      this.error =
        code === Code.FailedPrecondition || code === Code.Unimplemented
          ? "Delivery stats are not available on this server yet"
          : "Could not load delivery stats";
      // Once per run of failures: a live burst must not flash the toast every 5 s.
      if (code !== Code.FailedPrecondition && code !== Code.Unimplemented && !this.reported) this.onError(err);
      this.reported = true;
    } finally {
      if (seq === this.seq) this.inFlight = false;
    }
    this.render();
    if (this.dirty) this.bump();
  }

  private render(): void {
    const s = this.stats;
    this.status.textContent = this.error
      ? this.error
      : s
        ? `Updated ${new Date(this.fetchedAt).toLocaleTimeString()}`
        : "Loading…";
    this.status.classList.toggle("error", !!this.error);
    this.el.dataset.state = this.error ? "error" : s ? "ready" : "loading";
    this.el.dataset.window = s ? this.statsWindow : this.windowKey;
    const w = this.choice(this.statsWindow);
    const buckets = s?.buckets ?? [];
    const totals = Object.fromEntries(
      OUTCOMES.map((o) => [o.key, buckets.reduce((sum, b) => sum + count(b, o.key), 0)]),
    ) as Totals;
    this.renderTotals(totals, s);
    this.renderOutcomes(buckets, totals, w);
    this.renderLatency(buckets, s, w);
    this.renderErrors(s);
    this.renderSenders();
  }

  private renderTotals(t: Totals, s: GetDeliveryStatsResponse | null): void {
    for (const o of OUTCOMES) this.totalsEl.dataset[o.key] = s ? String(t[o.key]) : "";
    const finished = t.delivered + t.undelivered + t.failed;
    const rate = finished > 0 ? `${Math.round((100 * t.delivered) / finished)}% of finished` : "";
    const item = (key: string, label: string, value: string, tone = "", hint = "") =>
      h(
        "div",
        { class: `dv-total ${tone}`, "data-total": key },
        h("div", { class: "stat-label" }, label),
        h("div", { class: "dv-total-value" }, value),
        hint ? h("div", { class: "dv-total-hint" }, hint) : null,
      );
    const v = (n: number) => (s ? int(n) : "—");
    this.totalsEl.replaceChildren(
      item("queued", "Queued", v(t.queued)),
      item("sent", "Sent", v(t.sent)),
      item("delivered", "Delivered", v(t.delivered), "tone-good", rate),
      item("undelivered", "Undelivered", v(t.undelivered), t.undelivered > 0 ? "tone-warn" : ""),
      item("failed", "Failed", v(t.failed), t.failed > 0 ? "tone-bad" : ""),
      item("canceled", "Canceled", v(t.canceled)),
      item("p50", "Delivered p50", latency(durationSeconds(s?.deliveredP50))),
      item("p95", "Delivered p95", latency(durationSeconds(s?.deliveredP95))),
    );
  }

  private renderOutcomes(buckets: DeliveryBucket[], t: Totals, w: WindowChoice): void {
    const xs = buckets.map((b) => tsMillis(b.startTime) / 1000);
    const ys = OUTCOMES.map((o) => buckets.map((b) => count(b, o.key)));
    let peak: DeliveryBucket | null = null;
    for (const b of buckets) if (!peak || count(b, "queued") > count(peak, "queued")) peak = b;
    const sums = OUTCOMES.map((o) => `${int(t[o.key])} ${o.label.toLowerCase()}`).join(", ");
    const busiest =
      peak && count(peak, "queued") > 0
        ? ` Busiest bucket: ${bucketFmt.format(new Date(tsMillis(peak.startTime)))}, ${int(count(peak, "queued"))} queued.`
        : "";
    const summary = this.stats
      ? `Sends and outcomes, ${w.phrase} in ${w.bucketPhrase} buckets: ${sums}.${busiest}`
      : "Sends and outcomes: no data yet.";
    this.outcomesChart.setData(xs, ys, summary);

    const caption = `Sends and outcomes per ${w.bucketPhrase} bucket, ${w.phrase}`;
    this.outcomesTable.replaceChildren(
      h("caption", null, caption),
      h(
        "thead",
        null,
        h("tr", null, h("th", { scope: "col" }, "Bucket start"), OUTCOMES.map((o) => h("th", { scope: "col" }, o.label))),
      ),
      h(
        "tbody",
        null,
        buckets.map((b) =>
          h(
            "tr",
            null,
            h("th", { scope: "row" }, bucketFmt.format(new Date(tsMillis(b.startTime)))),
            OUTCOMES.map((o) => h("td", null, int(count(b, o.key)))),
          ),
        ),
      ),
    );
  }

  private renderLatency(buckets: DeliveryBucket[], s: GetDeliveryStatsResponse | null, w: WindowChoice): void {
    const xs = buckets.map((b) => tsMillis(b.startTime) / 1000);
    const orNull = (x: number) => (x > 0 ? x : null);
    const p50 = buckets.map((b) => orNull(durationSeconds(b.deliveredP50)));
    const p95 = buckets.map((b) => orNull(durationSeconds(b.deliveredP95)));
    let slowest: DeliveryBucket | null = null;
    for (const b of buckets) {
      if (!slowest || durationSeconds(b.deliveredP95) > durationSeconds(slowest.deliveredP95)) slowest = b;
    }
    const slow =
      slowest && durationSeconds(slowest.deliveredP95) > 0
        ? ` Slowest bucket: ${bucketFmt.format(new Date(tsMillis(slowest.startTime)))}, p95 ${latency(durationSeconds(slowest.deliveredP95))}.`
        : "";
    const summary = s
      ? `Time from send to delivered, ${w.phrase} in ${w.bucketPhrase} buckets: p50 ${latency(durationSeconds(s.deliveredP50))}, p95 ${latency(durationSeconds(s.deliveredP95))} over the window.${slow}`
      : "Time to delivered: no data yet.";
    this.latencyChart.setData(xs, [p50, p95], summary);

    this.latencyTable.replaceChildren(
      h("caption", null, `Time from send to delivered per ${w.bucketPhrase} bucket, ${w.phrase}`),
      h(
        "thead",
        null,
        h("tr", null, h("th", { scope: "col" }, "Bucket start"), h("th", { scope: "col" }, "p50"), h("th", { scope: "col" }, "p95")),
      ),
      h(
        "tbody",
        null,
        buckets.map((b) =>
          h(
            "tr",
            null,
            h("th", { scope: "row" }, bucketFmt.format(new Date(tsMillis(b.startTime)))),
            h("td", null, latency(durationSeconds(b.deliveredP50))),
            h("td", null, latency(durationSeconds(b.deliveredP95))),
          ),
        ),
      ),
    );
  }

  private renderErrors(s: GetDeliveryStatsResponse | null): void {
    const errors = s?.topErrors ?? [];
    if (!errors.length) {
      this.errorBody.replaceChildren(
        h("tr", { class: "dv-empty" }, h("td", { colspan: 3 }, s ? "No errors in this window" : "—")),
      );
      return;
    }
    this.errorBody.replaceChildren(
      ...errors.map((e) =>
        h(
          "tr",
          { "data-testid": "error-row", "data-code": String(e.code), "data-count": String(e.count) },
          h("td", { class: "dv-code" }, String(e.code)),
          h("td", { "data-testid": "error-description" }, e.description || "Unknown code"),
          h("td", { class: "num" }, int(e.count)),
        ),
      ),
    );
  }

  private renderSenders(): void {
    const rows = this.senders.filter((b) => Number(b.messages) > 0);
    if (!rows.length) {
      this.senderBody.replaceChildren(h("tr", { class: "dv-empty" }, h("td", { colspan: 4 }, "Nothing waiting")));
      return;
    }
    this.senderBody.replaceChildren(
      ...rows.map((b) => {
        const drain = durationSeconds(b.drainTime);
        const pace = b.segmentsPerSecond > 0 ? `${b.segmentsPerSecond} segments/s` : "unpaced";
        return h(
          "tr",
          {
            "data-testid": "sender-backlog",
            "data-sender": b.sender,
            "data-messages": String(b.messages),
            "data-segments": String(b.segments),
            "data-drain-seconds": String(Math.round(drain)),
          },
          h("td", null, userText("span", { class: "dv-sender" }, b.sender || "(default)")),
          h("td", { class: "num" }, int(b.messages)),
          h("td", { class: "num dv-seg" }, int(b.segments)),
          h("td", { class: "num", title: pace }, b.segmentsPerSecond > 0 ? humanAge(drain) : "unpaced"),
        );
      }),
    );
  }
}
