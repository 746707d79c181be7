// The signed-in inbox: state, live events, list, thread, composer, new-message form, admin dashboard.
import { Code } from "@connectrpc/connect";
import { apiBaseUrl, errorCode, errorText, makeClient, newRequestId, type Claims, type SmsClient } from "./api.js";
import { QueueDashboard } from "./dashboard.js";
import { h, icon, syncChildren } from "./dom.js";
import { dayKey, dayLabel, tsMillis } from "./format.js";
import type { Conversation, Event, Message } from "./gen/sms/v1/types_pb.js";
import { LiveConnection, type LiveState } from "./live.js";
import { ICONS, contactLabel, conversationItem, messageBubble } from "./views.js";

const CONV_PAGE = 30;
const MSG_PAGE = 30;

type Route = { kind: "inbox" } | { kind: "conv"; id: string } | { kind: "new" } | { kind: "queue" };

interface Pending {
  requestId: string;
  key: string;
}

interface Thread {
  id: string;
  gen: number;
  msgs: Map<string, Message>;
  /** null: first page not loaded yet; "": no older pages. */
  next: string | null;
  loading: boolean;
  nodes: Map<string, { msg: Message; el: HTMLElement }>;
  days: Map<string, HTMLElement>;
}

/** True when `incoming` is at least as new as `existing` (both carry update_time); replace by id then. */
function isNewer(incoming: { updateTime?: unknown }, existing: { updateTime?: unknown } | undefined): boolean {
  if (!existing) return true;
  const a = tsMillis(incoming.updateTime as never);
  const b = tsMillis(existing.updateTime as never);
  return a === 0 || b === 0 || a >= b;
}

function isNewerMessage(incoming: Message, existing: Message | undefined): boolean {
  if (!existing) return true;
  // A message's history only grows, so it orders two versions even within one millisecond, whatever
  // order two server processes appended their events in.
  const grown = incoming.statusHistory.length - existing.statusHistory.length;
  return grown !== 0 ? grown > 0 : isNewer(incoming, existing);
}

function parseRoute(hash: string): Route {
  const path = hash.replace(/^#\/?/, "");
  if (path.startsWith("c/") && path.length > 2) return { kind: "conv", id: decodeURIComponent(path.slice(2)) };
  if (path === "new") return { kind: "new" };
  if (path === "queue") return { kind: "queue" };
  return { kind: "inbox" };
}

export function go(hash: string): void {
  if (window.location.hash !== hash) window.location.hash = hash;
}

export class InboxApp {
  readonly el: HTMLElement;
  private readonly client: SmsClient;
  private readonly live: LiveConnection;
  private readonly isAdmin: boolean;
  private readonly dashboard: QueueDashboard | null;

  private convs = new Map<string, Conversation>();
  private convNodes = new Map<string, { conv: Conversation; active: boolean; el: HTMLElement }>();
  private convNext: string | null = null;
  private convLoading = false;
  private convError = "";
  private convGen = 0;

  private route: Route = { kind: "inbox" };
  private thread: Thread | null = null;
  private threadGen = 0;
  private drafts = new Map<string, string>();
  private pending = new Map<string, Pending>();
  private sendingIn = new Set<string>();
  private markingRead = new Set<string>();
  private newPending: Pending | null = null;
  private newSending = false;

  // Fixed elements.
  private readonly indicator: HTMLElement;
  private readonly convList: HTMLElement;
  private readonly convStatus: HTMLElement;
  private readonly convSentinel: HTMLElement;
  private readonly convScroller: HTMLElement;
  private readonly main: HTMLElement;
  private readonly toast: HTMLElement;
  private readonly tabs: HTMLElement | null;
  private toastTimer = 0;
  private convObserver: IntersectionObserver;
  private threadObserver: IntersectionObserver | null = null;
  private threadEls: {
    root: HTMLElement;
    head: HTMLElement;
    banner: HTMLElement;
    scroller: HTMLElement;
    sentinel: HTMLElement;
    olderStatus: HTMLElement;
    list: HTMLElement;
    input: HTMLTextAreaElement;
    send: HTMLButtonElement;
    counter: HTMLElement;
  } | null = null;
  private readonly cleanups: (() => void)[] = [];

  constructor(
    private readonly token: string,
    private readonly claims: Claims,
    private readonly onSignOut: (message?: string) => void,
  ) {
    this.client = makeClient(() => this.token);
    this.isAdmin = claims.role === "admin";
    this.dashboard = this.isAdmin ? new QueueDashboard(this.client, (e) => this.handleError(e, "Queue stats")) : null;

    this.indicator = h(
      "span",
      { class: "conn", "data-testid": "connection-indicator", "data-state": "reconnecting", role: "status" },
      h("span", { class: "conn-dot" }),
      h("span", { class: "conn-label" }, "Connecting…"),
    );
    this.tabs = this.isAdmin
      ? h(
          "nav",
          { class: "tabs" },
          h("a", { href: "#/", class: "tab", "data-testid": "tab-inbox" }, "Inbox"),
          h("a", { href: "#/queue", class: "tab", "data-testid": "tab-queue" }, "Queue"),
        )
      : null;
    this.convList = h("ul", { class: "conv-list", "data-testid": "conversation-list" });
    this.convStatus = h("div", { class: "list-status" });
    this.convSentinel = h("div", { class: "sentinel", "data-testid": "conversation-list-sentinel" });
    this.convScroller = h("div", { class: "sidebar-scroll" }, this.convList, this.convStatus, this.convSentinel);
    this.main = h("main", { class: "main" });
    this.toast = h(
      "div",
      { class: "toast", "data-testid": "error-toast", role: "alert", hidden: true, onclick: () => this.hideToast() },
    );

    this.el = h(
      "div",
      { class: "app", "data-pane": "list", "data-role": claims.role },
      h(
        "header",
        { class: "topbar" },
        h("div", { class: "brand" }, h("span", { class: "brand-mark" }, "SMS"), h("span", { class: "brand-name" }, "Inbox")),
        this.tabs,
        h("div", { class: "spacer" }),
        this.indicator,
        h(
          "div",
          { class: "who", title: `Signed in as ${claims.sub} (${claims.role})` },
          h("span", { class: "who-id", "data-testid": "user-id" }, claims.sub),
          h("span", { class: `role role-${claims.role}`, "data-testid": "user-role" }, claims.role),
        ),
        h("button", { class: "btn btn-ghost", type: "button", "data-testid": "sign-out", onclick: () => this.signOut() }, "Sign out"),
      ),
      h(
        "div",
        { class: "panes" },
        h(
          "aside",
          { class: "sidebar" },
          h(
            "div",
            { class: "sidebar-head" },
            h("h2", null, this.isAdmin ? "All conversations" : "Conversations"),
            h(
              "a",
              { class: "btn btn-primary", href: "#/new", "data-testid": "new-message-button" },
              icon(ICONS.plus),
              "New message",
            ),
          ),
          this.convScroller,
        ),
        this.main,
      ),
      this.toast,
    );

    this.convObserver = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) void this.loadConversations();
    }, { root: this.convScroller, rootMargin: "200px" });
    this.convObserver.observe(this.convSentinel);

    this.live = new LiveConnection(this.client, this.isAdmin, {
      onEvent: (ev) => this.applyEvent(ev),
      onResync: () => this.resync(),
      onConnected: (resumed) => {
        if (!resumed) this.refreshHeads();
        this.dashboard?.bump();
      },
      onState: (state, detail) => this.setConnState(state, detail),
      onUnauthenticated: (msg) => this.signOut(`Signed out: ${msg}`),
    });

    const onHash = () => this.applyRoute();
    const onVisible = () => {
      if (document.visibilityState === "visible") this.markOpenReadIfNeeded();
    };
    const onOnline = () => this.live.kick();
    window.addEventListener("hashchange", onHash);
    document.addEventListener("visibilitychange", onVisible);
    window.addEventListener("online", onOnline);
    this.cleanups.push(
      () => window.removeEventListener("hashchange", onHash),
      () => document.removeEventListener("visibilitychange", onVisible),
      () => window.removeEventListener("online", onOnline),
    );
  }

  start(): void {
    this.live.start();
    void this.loadConversations();
    this.applyRoute();
  }

  destroy(): void {
    this.live.stop();
    this.convObserver.disconnect();
    this.threadObserver?.disconnect();
    this.dashboard?.destroy();
    for (const c of this.cleanups) c();
    window.clearTimeout(this.toastTimer);
  }

  private signOut(message?: string): void {
    this.destroy();
    this.onSignOut(message);
  }

  // ---- errors ---------------------------------------------------------------------------------------

  private handleError(err: unknown, what: string): void {
    if (errorCode(err) === Code.Unauthenticated) {
      this.signOut(`Signed out: ${errorText(err)}`);
      return;
    }
    if (errorCode(err) === Code.Canceled) return;
    this.showToast(`${what}: ${errorText(err)}`);
  }

  private showToast(text: string): void {
    this.toast.textContent = text;
    this.toast.hidden = false;
    window.clearTimeout(this.toastTimer);
    this.toastTimer = window.setTimeout(() => this.hideToast(), 8000);
  }

  private hideToast(): void {
    this.toast.hidden = true;
  }

  private setConnState(state: LiveState, detail: string): void {
    const connected = state === "connected";
    this.indicator.dataset.state = connected ? "connected" : "reconnecting";
    this.indicator.title = connected ? `Live updates on (${apiBaseUrl()})` : detail || "Connecting…";
    const label = this.indicator.querySelector(".conn-label");
    if (label) label.textContent = connected ? "Connected" : state === "connecting" ? "Connecting…" : "Reconnecting…";
  }

  // ---- routing --------------------------------------------------------------------------------------

  private applyRoute(): void {
    let route = parseRoute(window.location.hash);
    if (route.kind === "queue" && !this.isAdmin) route = { kind: "inbox" };
    this.route = route;
    this.el.dataset.pane = route.kind === "inbox" ? "list" : "main";
    for (const tab of this.tabs?.querySelectorAll<HTMLElement>(".tab") ?? []) {
      const isQueue = tab.dataset.testid === "tab-queue";
      tab.classList.toggle("active", isQueue === (route.kind === "queue"));
    }
    if (route.kind !== "queue") this.dashboard?.hide();
    if (route.kind !== "conv") this.closeThread();

    switch (route.kind) {
      case "inbox":
        this.main.replaceChildren(
          h(
            "div",
            { class: "empty-main" },
            h("p", null, "Select a conversation, or start a new one."),
          ),
        );
        break;
      case "new":
        this.main.replaceChildren(this.newMessageForm());
        this.main.querySelector<HTMLInputElement>('[data-testid="new-to"]')?.focus();
        break;
      case "queue":
        if (this.dashboard) {
          this.main.replaceChildren(
            h("div", { class: "main-head phone-only" }, this.backButton(), h("h2", null, "Queue")),
            this.dashboard.el,
          );
          this.dashboard.show();
        }
        break;
      case "conv":
        this.openThread(route.id);
        break;
    }
    this.renderList();
  }

  private backButton(): HTMLElement {
    return h(
      "a",
      { class: "btn btn-icon back", href: "#/", "data-testid": "back-button", "aria-label": "Back to conversations" },
      icon(ICONS.back),
    );
  }

  // ---- live events ----------------------------------------------------------------------------------

  private applyEvent(ev: Event): void {
    const p = ev.payload;
    if (p.case === "message") this.upsertMessage(p.value);
    else if (p.case === "conversation") this.upsertConversation(p.value);
    this.dashboard?.bump();
  }

  /** Missed events that cannot be replayed: re-list the conversations and the open thread. */
  private resync(): void {
    this.convGen++;
    this.convs.clear();
    this.convNext = null;
    this.convLoading = false;
    this.renderList();
    void this.loadConversations();
    const t = this.thread;
    if (t) {
      this.threadGen++;
      t.gen = this.threadGen;
      t.msgs.clear();
      t.next = null;
      t.loading = false;
      this.renderThread("bottom");
      void this.loadOlder();
      void this.fetchConversation(t.id);
    }
    this.dashboard?.bump();
  }

  /** A stream started without a resume token: merge the newest pages, in case something changed meanwhile. */
  private refreshHeads(): void {
    if (this.convNext !== null) {
      const gen = this.convGen;
      this.client
        .listConversations({ pageSize: CONV_PAGE })
        .then((res) => {
          if (gen !== this.convGen) return;
          for (const c of res.conversations) this.putConversation(c);
          this.renderList();
        })
        .catch((err) => this.handleError(err, "Refreshing conversations"));
    }
    const t = this.thread;
    if (t && t.next !== null) {
      const gen = t.gen;
      this.client
        .listMessages({ conversationId: t.id, pageSize: MSG_PAGE })
        .then((res) => {
          if (this.thread !== t || t.gen !== gen) return;
          for (const m of res.messages) this.putMessage(t, m);
          this.renderThread("keep");
        })
        .catch((err) => this.handleError(err, "Refreshing messages"));
    }
  }

  private putConversation(c: Conversation): boolean {
    if (!c.id) return false;
    const existing = this.convs.get(c.id);
    if (!isNewer(c, existing)) return false;
    this.convs.set(c.id, c);
    return true;
  }

  private putMessage(t: Thread, m: Message): boolean {
    if (!m.id) return false;
    const existing = t.msgs.get(m.id);
    if (!isNewerMessage(m, existing)) return false;
    t.msgs.set(m.id, m);
    return true;
  }

  private upsertConversation(c: Conversation): void {
    if (!this.putConversation(c)) return;
    this.renderList();
    if (this.thread?.id === c.id) {
      this.renderThreadChrome();
      this.markOpenReadIfNeeded();
    }
  }

  private upsertMessage(m: Message): void {
    const t = this.thread;
    if (!t || t.id !== m.conversationId) return;
    if (!this.putMessage(t, m)) return;
    this.renderThread("keep");
  }

  // ---- conversation list ----------------------------------------------------------------------------

  private async loadConversations(): Promise<void> {
    if (this.convLoading || this.convNext === "") return;
    this.convLoading = true;
    this.convError = "";
    this.renderListStatus();
    const gen = this.convGen;
    try {
      const res = await this.client.listConversations({ pageSize: CONV_PAGE, pageToken: this.convNext ?? "" });
      if (gen !== this.convGen) return;
      for (const c of res.conversations) this.putConversation(c);
      this.convNext = res.nextPageToken;
    } catch (err) {
      if (gen !== this.convGen) return;
      this.convError = errorText(err);
      this.handleError(err, "Loading conversations");
    } finally {
      if (gen === this.convGen) this.convLoading = false;
    }
    if (gen !== this.convGen) return;
    this.renderList();
    // The sentinel may still be in view (short pages, tall screens): keep filling.
    if (!this.convError && this.convNext && this.sentinelVisible(this.convSentinel, this.convScroller)) {
      void this.loadConversations();
    }
  }

  private sentinelVisible(sentinel: HTMLElement, scroller: HTMLElement): boolean {
    if (!sentinel.isConnected || scroller.clientHeight === 0) return false;
    const s = sentinel.getBoundingClientRect();
    const r = scroller.getBoundingClientRect();
    return s.top < r.bottom + 200 && s.bottom > r.top - 200;
  }

  private sortedConversations(): Conversation[] {
    return [...this.convs.values()].sort(
      (a, b) =>
        tsMillis(b.lastMessageTime) - tsMillis(a.lastMessageTime) ||
        tsMillis(b.updateTime) - tsMillis(a.updateTime) ||
        (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
    );
  }

  private renderList(): void {
    const activeId = this.route.kind === "conv" ? this.route.id : "";
    const nodes: HTMLElement[] = [];
    const seen = new Set<string>();
    for (const c of this.sortedConversations()) {
      const active = c.id === activeId;
      let node = this.convNodes.get(c.id);
      if (!node || node.conv !== c || node.active !== active) {
        const el = conversationItem(c, active, this.isAdmin && c.owner !== this.claims.sub);
        node = { conv: c, active, el };
        this.convNodes.set(c.id, node);
      }
      nodes.push(node.el);
      seen.add(c.id);
    }
    for (const id of [...this.convNodes.keys()]) if (!seen.has(id)) this.convNodes.delete(id);
    syncChildren(this.convList, nodes);
    this.renderListStatus();
  }

  private renderListStatus(): void {
    let text = "";
    if (this.convLoading) text = "Loading…";
    else if (this.convError) text = `Could not load conversations. ${this.convError}`;
    else if (this.convNext === "" && this.convs.size === 0) text = "No conversations yet.";
    this.convStatus.textContent = text;
    this.convStatus.classList.toggle("error", !!this.convError && !this.convLoading);
    if (this.convError && !this.convLoading) {
      this.convStatus.append(
        " ",
        h("button", { class: "link", type: "button", onclick: () => void this.loadConversations() }, "Retry"),
      );
    }
  }

  private async fetchConversation(id: string): Promise<void> {
    try {
      const res = await this.client.getConversation({ conversationId: id });
      if (res.conversation) this.upsertConversation(res.conversation);
    } catch (err) {
      this.handleError(err, "Loading conversation");
    }
  }

  // ---- thread -------------------------------------------------------------------------------------

  private openThread(id: string): void {
    if (this.thread?.id === id && this.threadEls && this.main.contains(this.threadEls.root)) return;
    this.closeThread();
    this.threadGen++;
    const t: Thread = { id, gen: this.threadGen, msgs: new Map(), next: null, loading: false, nodes: new Map(), days: new Map() };
    this.thread = t;
    this.buildThreadView(t);
    this.renderThread("bottom");
    void this.loadOlder();
    if (!this.convs.has(id)) void this.fetchConversation(id);
    void this.markRead(id, true);
  }

  private closeThread(): void {
    const t = this.thread;
    if (t && this.threadEls) this.drafts.set(t.id, this.threadEls.input.value);
    this.threadObserver?.disconnect();
    this.threadObserver = null;
    this.thread = null;
    this.threadEls = null;
  }

  private buildThreadView(t: Thread): void {
    const input = h("textarea", {
      class: "composer-input",
      rows: 1,
      "data-testid": "composer-input",
      placeholder: "Write a message…",
      title: "Enter sends · Shift+Enter adds a line",
      "aria-label": "Message",
      maxlength: 1600,
    }) as HTMLTextAreaElement;
    input.value = this.drafts.get(t.id) ?? "";
    const send = h(
      "button",
      { class: "btn btn-primary send", type: "submit", "data-testid": "send-button", "aria-label": "Send" },
      icon(ICONS.send),
      h("span", { class: "send-label" }, "Send"),
    ) as HTMLButtonElement;
    const counter = h("span", { class: "counter" });
    const autosize = () => {
      input.style.height = "auto";
      input.style.height = `${Math.min(input.scrollHeight, 160)}px`;
      const n = input.value.length;
      counter.textContent = n > 120 ? `${n}/1600` : "";
      this.updateSendButton();
    };
    input.addEventListener("input", () => {
      this.drafts.set(t.id, input.value);
      autosize();
    });
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        void this.sendInThread();
      }
    });
    const form = h(
      "form",
      { class: "composer", onsubmit: (e: SubmitEvent) => (e.preventDefault(), void this.sendInThread()) },
      input,
      counter,
      send,
    );
    const sentinel = h("div", { class: "sentinel", "data-testid": "thread-sentinel" });
    const olderStatus = h("div", { class: "older-status" });
    const list = h("div", { class: "msg-list", "data-testid": "message-list" });
    const scroller = h("div", { class: "thread-scroll" }, sentinel, olderStatus, list);
    const head = h("div", { class: "thread-head" });
    const banner = h("div", { class: "optout-banner", "data-testid": "optout-banner", role: "note" });
    const root = h(
      "section",
      { class: "thread", "data-testid": "thread", "data-conversation-id": t.id },
      head,
      scroller,
      form,
    );
    this.threadEls = { root, head, banner, scroller, sentinel, olderStatus, list, input, send, counter };
    this.main.replaceChildren(root);
    this.threadObserver = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) void this.loadOlder();
    }, { root: scroller, rootMargin: "150px" });
    this.threadObserver.observe(sentinel);
    this.renderThreadChrome();
    requestAnimationFrame(autosize);
    if (window.matchMedia("(min-width: 721px)").matches) input.focus({ preventScroll: true });
  }

  /** Header, opt-out banner and composer state: everything that depends on the conversation itself. */
  private renderThreadChrome(): void {
    const t = this.thread;
    const els = this.threadEls;
    if (!t || !els) return;
    const c = this.convs.get(t.id);
    els.root.dataset.contact = c?.contactNumber ?? "";
    els.head.replaceChildren(
      this.backButton(),
      h(
        "div",
        { class: "thread-title" },
        h("div", { class: "thread-contact", "data-testid": "thread-contact" }, c ? contactLabel(c) : "Loading…"),
        c
          ? h(
              "div",
              { class: "thread-sub" },
              c.contactId ? h("span", { class: "chip" }, `ID ${c.contactId}`) : null,
              c.ourNumber ? h("span", null, `via ${c.ourNumber}`) : null,
              this.isAdmin && c.owner && c.owner !== this.claims.sub ? h("span", null, `owner @${c.owner}`) : null,
            )
          : null,
      ),
    );
    const opted = !!c?.optedOut;
    // In the DOM only while opted out, so tests can count it.
    if (opted && !els.banner.isConnected) els.root.insertBefore(els.banner, els.scroller);
    else if (!opted) els.banner.remove();
    els.banner.replaceChildren(
      ...(opted
        ? [
            icon(ICONS.ban),
            h(
              "span",
              null,
              h("strong", null, "This contact opted out (STOP). "),
              "Messages cannot be sent until they reply START.",
            ),
          ]
        : []),
    );
    els.input.disabled = opted;
    els.input.placeholder = opted
      ? "Sending is disabled: the contact opted out."
      : "Write a message…";
    this.updateSendButton();
  }

  private updateSendButton(): void {
    const t = this.thread;
    const els = this.threadEls;
    if (!t || !els) return;
    const c = this.convs.get(t.id);
    const sending = this.sendingIn.has(t.id);
    els.send.disabled = !c || c.optedOut || sending || !els.input.value.trim();
    els.send.classList.toggle("busy", sending);
    els.root.dataset.sending = sending ? "true" : "false";
  }

  private async loadOlder(): Promise<void> {
    const t = this.thread;
    if (!t || t.loading || t.next === "") return;
    t.loading = true;
    const gen = t.gen;
    const first = t.next === null;
    this.renderOlderStatus();
    let ok = false;
    try {
      const res = await this.client.listMessages({ conversationId: t.id, pageSize: MSG_PAGE, pageToken: t.next ?? "" });
      if (this.thread !== t || t.gen !== gen) return;
      for (const m of res.messages) this.putMessage(t, m);
      t.next = res.nextPageToken;
      ok = true;
    } catch (err) {
      if (this.thread !== t || t.gen !== gen) return;
      this.handleError(err, "Loading messages");
    } finally {
      if (this.thread === t && t.gen === gen) t.loading = false;
    }
    if (this.thread !== t || t.gen !== gen) return;
    this.renderThread(first ? "bottom" : "prepend");
    const els = this.threadEls;
    if (ok && t.next && els && this.sentinelVisible(els.sentinel, els.scroller)) void this.loadOlder();
  }

  private renderOlderStatus(): void {
    const t = this.thread;
    const els = this.threadEls;
    if (!t || !els) return;
    let text = "";
    if (t.loading) text = t.next === null ? "Loading messages…" : "Loading earlier messages…";
    else if (t.next === "") text = t.msgs.size ? "Beginning of the conversation" : "No messages yet";
    els.olderStatus.textContent = text;
  }

  /**
   * Re-renders the bubbles keyed by id. `bottom` scrolls to the end; `prepend` keeps the view steady while older
   * messages appear above; `keep` sticks to the bottom when the view was there.
   */
  private renderThread(mode: "bottom" | "prepend" | "keep"): void {
    const t = this.thread;
    const els = this.threadEls;
    if (!t || !els) return;
    const sc = els.scroller;
    const atBottom = sc.scrollHeight - sc.scrollTop - sc.clientHeight < 60;
    const fromBottom = sc.scrollHeight - sc.scrollTop;

    const msgs = [...t.msgs.values()].sort(
      (a, b) => tsMillis(a.createTime) - tsMillis(b.createTime) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0),
    );
    const nodes: HTMLElement[] = [];
    let lastDay = "";
    const seenDays = new Set<string>();
    const seen = new Set<string>();
    for (const m of msgs) {
      const day = dayKey(m.createTime);
      if (day !== lastDay) {
        lastDay = day;
        let sep = t.days.get(day);
        if (!sep) {
          sep = h("div", { class: "day-sep" }, h("span", null, dayLabel(m.createTime)));
          t.days.set(day, sep);
        }
        if (!seenDays.has(day)) nodes.push(sep);
        seenDays.add(day);
      }
      let node = t.nodes.get(m.id);
      if (!node || node.msg !== m) {
        node = { msg: m, el: messageBubble(m) };
        t.nodes.set(m.id, node);
      }
      nodes.push(node.el);
      seen.add(m.id);
    }
    for (const id of [...t.nodes.keys()]) if (!seen.has(id)) t.nodes.delete(id);
    syncChildren(els.list, nodes);
    this.renderOlderStatus();

    if (mode === "bottom" || (mode === "keep" && atBottom)) sc.scrollTop = sc.scrollHeight;
    else if (mode === "prepend") sc.scrollTop = sc.scrollHeight - fromBottom;
  }

  private markOpenReadIfNeeded(): void {
    const t = this.thread;
    if (!t || document.visibilityState !== "visible") return;
    const c = this.convs.get(t.id);
    if (c && c.unreadCount > 0) void this.markRead(t.id, false);
  }

  private async markRead(id: string, always: boolean): Promise<void> {
    if (this.markingRead.has(id)) return;
    const c = this.convs.get(id);
    if (!always && (!c || c.unreadCount === 0)) return;
    this.markingRead.add(id);
    if (c && c.unreadCount > 0) {
      this.convs.set(id, { ...c, unreadCount: 0 });
      this.renderList();
    }
    try {
      const res = await this.client.markConversationRead({ conversationId: id });
      if (res.conversation) this.upsertConversation(res.conversation);
    } catch (err) {
      this.handleError(err, "Marking as read");
    } finally {
      this.markingRead.delete(id);
    }
  }

  // ---- sending --------------------------------------------------------------------------------------

  /** The request id for this payload: reused until a send of it succeeds, so retries and double clicks send once. */
  private requestIdFor(slot: string, key: string): string {
    const p = slot === "\u0000new" ? this.newPending : this.pending.get(slot);
    if (p && p.key === key) return p.requestId;
    const fresh = { requestId: newRequestId(), key };
    if (slot === "\u0000new") this.newPending = fresh;
    else this.pending.set(slot, fresh);
    return fresh.requestId;
  }

  private async sendInThread(): Promise<void> {
    const t = this.thread;
    const els = this.threadEls;
    if (!t || !els) return;
    const c = this.convs.get(t.id);
    const body = els.input.value.trim();
    if (!c || !body || c.optedOut || this.sendingIn.has(t.id)) return;
    const key = JSON.stringify([c.contactNumber, body, c.contactId]);
    const requestId = this.requestIdFor(t.id, key);
    this.sendingIn.add(t.id);
    this.updateSendButton();
    try {
      const res = await this.client.send({ to: c.contactNumber, body, contactId: c.contactId, requestId });
      this.pending.delete(t.id);
      if (this.drafts.get(t.id)?.trim() === body) this.drafts.set(t.id, "");
      if (this.thread === t && this.threadEls === els && els.input.value.trim() === body) {
        els.input.value = "";
        els.input.dispatchEvent(new Event("input"));
      }
      if (res.message && this.thread === t && res.message.conversationId === t.id) {
        this.putMessage(t, res.message);
        this.renderThread("bottom");
      }
      // The live CONVERSATION_UPDATED event does this too; one read keeps the row right while offline.
      void this.fetchConversation(t.id);
    } catch (err) {
      this.handleError(err, "Message not sent");
      if (errorCode(err) === Code.FailedPrecondition) void this.fetchConversation(t.id);
    } finally {
      this.sendingIn.delete(t.id);
      this.updateSendButton();
    }
  }

  private newMessageForm(): HTMLElement {
    const to = h("input", {
      type: "tel",
      class: "input",
      id: "new-to",
      "data-testid": "new-to",
      placeholder: "+1 415 555 0100",
      autocomplete: "off",
      required: true,
    }) as HTMLInputElement;
    const contactId = h("input", {
      type: "text",
      class: "input",
      id: "new-contact-id",
      "data-testid": "new-contact-id",
      placeholder: "optional",
      autocomplete: "off",
    }) as HTMLInputElement;
    const body = h("textarea", {
      class: "input",
      id: "new-body",
      rows: 5,
      maxlength: 1600,
      "data-testid": "new-body",
      placeholder: "Message",
      required: true,
    }) as HTMLTextAreaElement;
    const send = h(
      "button",
      { class: "btn btn-primary", type: "submit", "data-testid": "new-send" },
      icon(ICONS.send),
      "Send",
    ) as HTMLButtonElement;
    const err = h("div", { class: "form-error", "data-testid": "new-error", role: "alert" });

    const submit = async () => {
      const toVal = to.value.trim();
      const bodyVal = body.value.trim();
      err.textContent = "";
      if (!toVal) return void (err.textContent = "Enter a phone number.", to.focus());
      if (!bodyVal) return void (err.textContent = "Write a message.", body.focus());
      if (this.newSending) return;
      const cid = contactId.value.trim();
      const requestId = this.requestIdFor("\u0000new", JSON.stringify([toVal, bodyVal, cid]));
      this.newSending = true;
      send.disabled = true;
      try {
        const res = await this.client.send({ to: toVal, body: bodyVal, contactId: cid, requestId });
        this.newPending = null;
        const convId = res.message?.conversationId;
        if (convId) {
          try {
            const got = await this.client.getConversation({ conversationId: convId });
            if (got.conversation) this.putConversation(got.conversation);
          } catch {
            // The thread view fetches it again.
          }
          go(`#/c/${encodeURIComponent(convId)}`);
        }
      } catch (e) {
        err.textContent = errorText(e);
        this.handleError(e, "Message not sent");
      } finally {
        this.newSending = false;
        send.disabled = false;
      }
    };
    body.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        void submit();
      }
    });
    return h(
      "section",
      { class: "new-message", "data-testid": "new-message-form" },
      h("div", { class: "main-head" }, this.backButton(), h("h2", null, "New message")),
      h(
        "form",
        { class: "new-form", onsubmit: (e: SubmitEvent) => (e.preventDefault(), void submit()) },
        h("label", { for: "new-to" }, "To (phone number)"),
        to,
        h("label", { for: "new-contact-id" }, "CRM contact ID"),
        contactId,
        h("label", { for: "new-body" }, "Message"),
        body,
        err,
        h(
          "div",
          { class: "form-actions" },
          h("a", { class: "btn btn-ghost", href: "#/" }, "Cancel"),
          send,
        ),
      ),
    );
  }
}
