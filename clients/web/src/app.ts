// The signed-in inbox: the page's frame, the routes between its views, and the live stream feeding them.
import { Code } from "@connectrpc/connect";
import { errorCode, makeClient, type Claims, type SmsClient } from "./api.js";
import { ConnectionIndicator } from "./connection-indicator.js";
import { ConversationList } from "./conversation-list.js";
import { QueueDashboard } from "./dashboard.js";
import { h } from "./dom.js";
import { ErrorToast } from "./error-toast.js";
import type { Conversation, Event } from "./gen/sms/v1/types_pb.js";
import type { Inbox } from "./inbox.js";
import { LiveConnection } from "./live.js";
import { NewMessageForm } from "./new-message.js";
import { DesktopNotifier } from "./notifications.js";
import { parseRoute, type Route } from "./route.js";
import { InboxSummary } from "./summary.js";
import { TemplatesPage } from "./templates-page.js";
import { ThreadView } from "./thread.js";
import { Topbar } from "./topbar.js";
import { LatestById, newerConversation } from "./versions.js";
import { backButton, errorLine } from "./views.js";

export class InboxApp implements Inbox {
  readonly el: HTMLElement;
  readonly client: SmsClient;
  readonly isAdmin: boolean;
  readonly conversations = new LatestById<Conversation>(newerConversation);

  private readonly live: LiveConnection;
  private readonly indicator = new ConnectionIndicator();
  private readonly toast = new ErrorToast();
  private readonly notifier = new DesktopNotifier();
  private readonly summary: InboxSummary;
  private readonly topbar: Topbar;
  /** The pane beside the list: a thread, the new-message form, the dashboard, or a hint. */
  private readonly main: HTMLElement;
  private readonly list: ConversationList;
  private readonly thread: ThreadView;
  private readonly newMessage: NewMessageForm;
  private readonly dashboard: QueueDashboard | null;
  private readonly templates: TemplatesPage;
  private readonly cleanups: (() => void)[] = [];

  constructor(
    private readonly token: string,
    readonly claims: Claims,
    private readonly onSignOut: (message?: Node) => void,
  ) {
    this.client = makeClient(() => this.token);
    this.isAdmin = claims.role === "admin";
    this.topbar = new Topbar(claims, this.isAdmin, this.indicator.el, this.notifier.el, () => this.signOut());
    this.main = h("main", { class: "main" });
    this.list = new ConversationList(this);
    this.summary = new InboxSummary(
      this.client,
      (counts) => this.list.showCounts(counts),
      (e) => this.reportError(e, "Inbox counts"),
    );
    this.thread = new ThreadView(this, this.main);
    this.newMessage = new NewMessageForm(this, this.main);
    this.templates = new TemplatesPage(this, this.main);
    this.dashboard = this.isAdmin ? new QueueDashboard(this.client, (e) => this.reportError(e, "Queue stats")) : null;
    // data-pane picks what shows at phone width, where only one of the list and the main pane fits.
    this.el = h(
      "div",
      { class: "app", "data-pane": "list", "data-role": claims.role },
      this.topbar.el,
      h("div", { class: "panes" }, this.list.el, this.main),
      this.toast.el,
    );

    this.live = new LiveConnection(this.client, this.isAdmin, {
      onEvent: (ev) => this.applyEvent(ev),
      onResync: () => this.resync(),
      onConnected: (resumed) => {
        if (!resumed) this.refreshHeads();
        this.dashboard?.bump();
        this.summary.bump();
      },
      onState: (state, detail) => this.indicator.show(state, detail),
      onUnauthenticated: (err) => this.signOut(errorLine(err, "Signed out")),
    });

    const onHash = () => this.applyRoute();
    const onVisible = () => {
      if (document.visibilityState === "visible") this.thread.markReadIfVisible();
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
    void this.list.loadMore();
    this.applyRoute();
  }

  destroy(): void {
    this.live.stop();
    this.summary.destroy();
    this.list.destroy();
    this.thread.close();
    this.dashboard?.destroy();
    for (const c of this.cleanups) c();
    this.toast.destroy();
  }

  // ---- Inbox: what the views share ------------------------------------------------------------------

  upsertConversation(c: Conversation): void {
    if (!this.conversations.put(c)) return;
    this.list.render();
    this.thread.conversationChanged(c.id);
  }

  async fetchConversation(id: string): Promise<void> {
    try {
      const res = await this.client.getConversation({ conversationId: id });
      if (res.conversation) this.upsertConversation(res.conversation);
    } catch (err) {
      this.reportError(err, "Loading conversation");
    }
  }

  reportError(err: unknown, what: string): void {
    const code = errorCode(err);
    if (code === Code.Unauthenticated) this.signOut(errorLine(err, "Signed out"));
    else if (code !== Code.Canceled) this.toast.show(errorLine(err, what));
  }

  private signOut(message?: Node): void {
    this.destroy();
    this.onSignOut(message);
  }

  // ---- routing --------------------------------------------------------------------------------------

  private applyRoute(): void {
    let route: Route = parseRoute(window.location.hash);
    if (route.kind === "queue" && !this.isAdmin) route = { kind: "inbox" };
    this.el.dataset.pane = route.kind === "inbox" ? "list" : "main";
    this.topbar.highlight(route.kind === "queue" || route.kind === "templates" ? route.kind : "inbox");
    if (route.kind !== "queue") this.dashboard?.hide();
    if (route.kind !== "conv") this.thread.close();

    switch (route.kind) {
      case "inbox":
        this.main.replaceChildren(
          h("div", { class: "empty-main" }, h("p", null, "Select a conversation, or start a new one.")),
        );
        break;
      case "new":
        this.newMessage.open();
        break;
      case "queue":
        if (this.dashboard) {
          this.main.replaceChildren(
            h("div", { class: "main-head phone-only" }, backButton(), h("h2", null, "Queue")),
            this.dashboard.el,
          );
          this.dashboard.show();
        }
        break;
      case "templates":
        this.templates.open();
        break;
      case "conv":
        this.thread.open(route.id, route.messageId);
        break;
    }
    this.list.select(route.kind === "conv" ? route.id : "");
  }

  // ---- live events ----------------------------------------------------------------------------------

  private applyEvent(ev: Event): void {
    const p = ev.payload;
    if (p.case === "message") {
      this.thread.showMessage(p.value);
      this.notifier.notify(p.value, this.conversations.get(p.value.conversationId));
    } else if (p.case === "conversation") {
      this.upsertConversation(p.value);
      this.summary.bump();
    }
    this.dashboard?.bump();
  }

  /** Missed events that cannot be replayed: re-list the conversations and the open thread. */
  private resync(): void {
    this.summary.bump();
    this.list.reload();
    this.thread.reload();
    this.dashboard?.bump();
  }

  /** A stream started without a resume token: merge the newest pages, in case something changed meanwhile. */
  private refreshHeads(): void {
    this.list.refreshHead();
    this.thread.refreshHead();
  }
}
