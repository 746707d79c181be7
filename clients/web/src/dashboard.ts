// Admin dashboard: delivery over time (GetDeliveryStats, delivery-dashboard.ts: charts, totals, errors, senders;
// at most once every 5 s) above the send queue's counters (GetQueueStats, at most once a second), both refreshed
// when live events arrive.
import type { SmsClient } from "./api.js";
import { DeliveryDashboard } from "./delivery-dashboard.js";
import { h, icon } from "./dom.js";
import { durationSeconds, humanAge, int } from "./format.js";
import type { GetQueueStatsResponse } from "./gen/sms/v1/sms_pb.js";
import { ICONS } from "./views.js";

const MIN_INTERVAL_MS = 1000;

export class QueueDashboard {
  readonly el: HTMLElement;
  private readonly body: HTMLElement;
  private readonly updated: HTMLElement;
  private readonly delivery: DeliveryDashboard;
  private stats: GetQueueStatsResponse | null = null;
  private fetchedAt = 0;
  private visible = false;
  private dirty = true;
  private inFlight = false;
  private lastFetch = 0;
  private timer = 0;
  private ageTicker = 0;
  private error = "";

  constructor(
    private readonly client: SmsClient,
    private readonly onError: (err: unknown) => void,
  ) {
    this.delivery = new DeliveryDashboard(client, onError);
    this.updated = h("span", { class: "dash-updated", "data-testid": "queue-updated" });
    this.body = h("div", { class: "dash-cards" });
    this.el = h(
      "section",
      { class: "dashboard", "data-testid": "queue-dashboard" },
      h(
        "div",
        { class: "dash-head" },
        h("h2", null, "Dashboard"),
        this.updated,
        h(
          "button",
          { class: "btn btn-ghost", type: "button", "data-testid": "queue-refresh", onclick: () => this.refreshNow() },
          icon(ICONS.refresh),
          "Refresh",
        ),
      ),
      this.delivery.el,
      h("h2", { class: "dash-section-title" }, "Send queue"),
      this.body,
      h(
        "p",
        { class: "dash-note" },
        "Updates as messages move through the queue (live events): the queue at most once a second, delivery at most once every 5 seconds.",
      ),
    );
    this.render();
  }

  show(): void {
    this.visible = true;
    if (this.dirty) this.bump();
    this.delivery.show();
    window.clearInterval(this.ageTicker);
    this.ageTicker = window.setInterval(() => this.renderAgeOnly(), 1000);
  }

  hide(): void {
    this.visible = false;
    window.clearInterval(this.ageTicker);
    this.delivery.hide();
  }

  destroy(): void {
    this.hide();
    window.clearTimeout(this.timer);
    this.delivery.destroy();
  }

  /** Something changed (a live event): refresh soon, but not more than once per MIN_INTERVAL_MS. */
  bump(): void {
    this.delivery.bump();
    this.dirty = true;
    if (!this.visible || this.timer) return;
    const wait = Math.max(0, this.lastFetch + MIN_INTERVAL_MS - Date.now());
    this.timer = window.setTimeout(() => {
      this.timer = 0;
      void this.fetch();
    }, wait);
  }

  refreshNow(): void {
    this.delivery.refreshNow();
    window.clearTimeout(this.timer);
    this.timer = 0;
    void this.fetch();
  }

  private async fetch(): Promise<void> {
    if (this.inFlight) {
      this.dirty = true;
      return;
    }
    this.inFlight = true;
    this.dirty = false;
    this.lastFetch = Date.now();
    try {
      this.stats = await this.client.getQueueStats({});
      this.fetchedAt = Date.now();
      this.delivery.queueSenders(this.stats.senders);
      this.error = "";
    } catch (err) {
      this.error = "Could not load queue stats";
      this.onError(err);
    } finally {
      this.inFlight = false;
    }
    this.render();
    if (this.dirty) this.bump();
  }

  private oldestAge(): number {
    const s = this.stats;
    if (!s) return 0;
    const age = durationSeconds(s.oldestQueuedAge);
    return age > 0 ? age + (Date.now() - this.fetchedAt) / 1000 : 0;
  }

  private renderAgeOnly(): void {
    const el = this.body.querySelector<HTMLElement>('[data-testid="stat-oldest-queued-age"] .stat-value');
    if (el && this.stats) el.textContent = humanAge(this.oldestAge());
  }

  private render(): void {
    const s = this.stats;
    this.updated.textContent = this.error
      ? this.error
      : s
        ? `Updated ${new Date(this.fetchedAt).toLocaleTimeString()}`
        : "Loading…";
    this.updated.classList.toggle("error", !!this.error);
    if (!s) {
      this.body.replaceChildren();
      return;
    }
    const card = (key: string, label: string, value: string, tone = "", hint = "") =>
      h(
        "div",
        { class: `stat ${tone}`, "data-testid": `stat-${key}`, "data-value": value, title: hint || undefined },
        h("div", { class: "stat-label" }, label),
        h("div", { class: "stat-value" }, value),
      );
    const n = (x: bigint) => Number(x);
    const age = this.oldestAge();
    this.body.replaceChildren(
      card("queued", "Queued", int(s.queued), n(s.queued) > 0 ? "tone-info" : "", "Stored as queued, not yet taken by a worker"),
      card("in-progress", "In progress", int(s.inProgress), "", "A send attempt is in flight"),
      card("retrying", "Retrying", int(s.retrying), n(s.retrying) > 0 ? "tone-warn" : "", "Waiting to retry after a transient error"),
      card("failed-last-hour", "Failed (last hour)", int(s.failedLastHour), n(s.failedLastHour) > 0 ? "tone-bad" : ""),
      card("sent-last-minute", "Sent (last minute)", int(s.sentLastMinute)),
      card("sent-last-hour", "Sent (last hour)", int(s.sentLastHour)),
      card("oldest-queued-age", "Oldest queued", humanAge(age), age > 60 ? "tone-warn" : "", "Age of the oldest message still waiting"),
      card("queue-length", "Queue length", int(s.queueLength), "", "Jobs waiting in the worker queue"),
      h(
        "div",
        {
          class: `stat stat-wide ${s.workerHealthy ? "tone-good" : "tone-bad"}`,
          "data-testid": "stat-worker-health",
          "data-value": s.workerHealthy ? "healthy" : "unhealthy",
        },
        h("div", { class: "stat-label" }, "Worker"),
        h("div", { class: "stat-value" }, s.workerHealthy ? "Healthy" : "Not seen recently"),
        s.workerHealth ? h("div", { class: "stat-detail" }, s.workerHealth) : null,
      ),
    );
  }
}
