// The open conversation: header (name and labels editable in place, the Assign menu), opt-out banner, its messages
// and notes (older pages load when scrolling up; the app feeds it live ones) and the composer. Opening a
// conversation marks it read; opening it at a message (a search hit) loads older pages until that message shows.
// Outbound bubbles carry their scheduled time, Cancel, failure in words and Retry (message-actions.ts).
import { AssignMenu } from "./assign-menu.js";
import { Composer } from "./composer.js";
import { LabelEditor, NameEditor } from "./conversation-editor.js";
import { KeyedElements, h, icon, sentinelInView, syncChildren, userText, watchSentinel } from "./dom.js";
import { dayKey, dayLabel, tsMillis } from "./format.js";
import type { Message } from "./gen/sms/v1/types_pb.js";
import { showsOwner, type Inbox } from "./inbox.js";
import { MessageActions } from "./message-actions.js";
import { Pager } from "./pager.js";
import { LatestById, newerMessage } from "./versions.js";
import { ICONS, backButton, labelled, messageBubble } from "./views.js";

const PAGE_SIZE = 30;

/**
 * What a re-render does to the scroll position: `bottom` scrolls to the end; `prepend` keeps the view steady while
 * older messages appear above; `keep` sticks to the bottom when the view was there.
 */
type Scroll = "bottom" | "prepend" | "keep";

/** One opening of a conversation; reopening it makes a new one, so late answers for the old one are dropped. */
interface Thread {
  readonly id: string;
  readonly messages: LatestById<Message>;
  readonly pager: Pager<Message>;
  readonly bubbles: KeyedElements;
  readonly days: KeyedElements;
  readonly root: HTMLElement;
  readonly head: HTMLElement;
  readonly sub: HTMLElement;
  readonly banner: HTMLElement;
  readonly scroller: HTMLElement;
  readonly sentinel: HTMLElement;
  readonly olderStatus: HTMLElement;
  readonly list: HTMLElement;
  readonly observer: IntersectionObserver;
  readonly name: NameEditor;
  readonly labels: LabelEditor;
  readonly assign: AssignMenu;
  /** The message to show and mark (a search hit), "" for none. */
  highlight: string;
}

function oldestFirst(a: Message, b: Message): number {
  return tsMillis(a.createTime) - tsMillis(b.createTime) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

export class ThreadView {
  private thread: Thread | null = null;
  private readonly composer: Composer;
  private readonly actions: MessageActions;
  private readonly markingRead = new Set<string>();

  /** `pane` is where the thread shows (the main pane, shared with the other views). */
  constructor(
    private readonly inbox: Inbox,
    private readonly pane: HTMLElement,
  ) {
    this.composer = new Composer(inbox);
    this.actions = new MessageActions(inbox, (m) => this.showMessage(m));
  }

  /** Shows conversation `id`; with `messageId`, scrolled to that message, marked. */
  open(id: string, messageId = ""): void {
    if (this.thread?.id === id && this.pane.contains(this.thread.root)) {
      if (messageId && messageId !== this.thread.highlight) void this.reveal(this.thread, messageId);
      return;
    }
    this.close();
    const t = this.build(id);
    this.thread = t;
    this.pane.replaceChildren(t.root);
    this.renderChrome(t);
    this.composer.settle();
    this.renderMessages(t, "bottom");
    void this.loadOlder(t);
    if (!this.inbox.conversations.has(id)) void this.inbox.fetchConversation(id);
    void this.markRead(id, true);
    if (messageId) void this.reveal(t, messageId);
  }

  /** Loads older pages until message `messageId` is shown (or the thread's beginning), then scrolls to it, marked. */
  private async reveal(t: Thread, messageId: string): Promise<void> {
    t.highlight = messageId;
    t.root.dataset.highlight = messageId;
    while (this.thread === t && t.highlight === messageId && !t.messages.has(messageId) && !t.pager.finished) {
      if (t.pager.loading) await new Promise((resolve) => window.setTimeout(resolve, 50));
      else await this.loadOlder(t);
    }
    if (this.thread !== t || t.highlight !== messageId) return;
    this.renderMessages(t, "keep");
    const el = t.list.querySelector<HTMLElement>(`[data-message-id="${CSS.escape(messageId)}"]`);
    el?.scrollIntoView({ block: "center" });
  }

  /** Lets the open thread go (its draft is kept); the pane's next view replaces its elements. */
  close(): void {
    if (!this.thread) return;
    this.composer.detach();
    this.thread.observer.disconnect();
    this.thread = null;
  }

  /** Events were missed that cannot be replayed: list the open thread's messages again. */
  reload(): void {
    const t = this.thread;
    if (!t) return;
    t.pager.reset();
    t.messages.clear();
    this.renderMessages(t, "bottom");
    void this.loadOlder(t);
    void this.inbox.fetchConversation(t.id);
  }

  /** A stream began without a resume token: merge the newest page, in case something changed before it began. */
  refreshHead(): void {
    const t = this.thread;
    if (!t) return;
    t.pager
      .first()
      .then((items) => {
        if (!items || this.thread !== t) return;
        for (const m of items) t.messages.put(m);
        this.renderMessages(t, "keep");
      })
      .catch((err) => this.inbox.reportError(err, "Refreshing messages"));
  }

  /** A live message: shown when it belongs to the open thread and is newer than the version shown. */
  showMessage(m: Message): void {
    const t = this.thread;
    if (!t || t.id !== m.conversationId || !t.messages.put(m)) return;
    this.renderMessages(t, "keep");
  }

  /** A conversation was upserted: the open one's header, banner and composer follow it. */
  conversationChanged(id: string): void {
    const t = this.thread;
    if (!t || t.id !== id) return;
    this.renderChrome(t);
    this.markReadIfVisible();
  }

  /** What arrives in the open conversation while the page is in view has been read. */
  markReadIfVisible(): void {
    const t = this.thread;
    if (!t || document.visibilityState !== "visible") return;
    const c = this.inbox.conversations.get(t.id);
    if (c && c.unreadCount > 0) void this.markRead(t.id, false);
  }

  private build(id: string): Thread {
    const sentinel = h("div", { class: "sentinel", "data-testid": "thread-sentinel" });
    const olderStatus = h("div", { class: "older-status" });
    const list = h("div", { class: "msg-list", "data-testid": "message-list" });
    const scroller = h("div", { class: "thread-scroll" }, sentinel, olderStatus, list);
    const head = h("div", { class: "thread-head" });
    const root = h("section", { class: "thread", "data-testid": "thread", "data-conversation-id": id }, head, scroller);
    const t: Thread = {
      id,
      messages: new LatestById(newerMessage),
      pager: new Pager((pageToken) =>
        this.inbox.client
          .listMessages({ conversationId: id, pageSize: PAGE_SIZE, pageToken })
          .then((res) => ({ items: res.messages, nextPageToken: res.nextPageToken })),
      ),
      bubbles: new KeyedElements(),
      days: new KeyedElements(),
      root,
      head,
      sub: h("div", { class: "thread-sub" }),
      banner: h("div", { class: "optout-banner", "data-testid": "optout-banner", role: "note" }),
      scroller,
      sentinel,
      olderStatus,
      list,
      observer: watchSentinel(sentinel, scroller, 150, () => void this.loadOlder(t)),
      name: new NameEditor(this.inbox, id),
      labels: new LabelEditor(this.inbox, id),
      assign: new AssignMenu(this.inbox, id),
      highlight: "",
    };
    root.append(
      this.composer.attach(id, {
        sent: (m) => {
          if (!m || this.thread !== t || m.conversationId !== t.id) return;
          t.messages.put(m);
          this.renderMessages(t, "bottom");
        },
        sending: (inFlight) => {
          root.dataset.sending = inFlight ? "true" : "false";
        },
      }),
    );
    return t;
  }

  /** Header, opt-out banner and composer state: everything that depends on the conversation itself. */
  private renderChrome(t: Thread): void {
    const c = this.inbox.conversations.get(t.id);
    t.root.dataset.contact = c?.contactNumber ?? "";
    t.root.dataset.assignee = c?.owner ?? "";
    t.name.update(c);
    t.labels.update(c);
    t.assign.update(c);
    // The editors keep their elements (and what is typed in them); only the line of facts is rebuilt.
    if (!t.head.firstChild) {
      t.head.append(
        backButton(),
        h("div", { class: "thread-title" }, t.name.el, t.sub, t.labels.el),
        h("div", { class: "spacer" }),
        h("div", { class: "thread-actions" }, t.assign.chip, t.assign.el),
      );
    }
    t.sub.hidden = !c;
    t.sub.replaceChildren(
      ...(c
        ? [
            c.contactName && c.contactNumber
              ? userText("span", { "data-testid": "thread-number", class: "thread-number" }, c.contactNumber)
              : "",
            c.contactId ? labelled("ID ", c.contactId, { class: "chip" }) : "",
            c.ourNumber ? labelled("via ", c.ourNumber) : "",
            showsOwner(this.inbox, c) ? labelled("owner @", c.owner) : "",
          ]
        : []),
    );
    const opted = !!c?.optedOut;
    // In the DOM only while opted out, so tests can count it.
    if (opted && !t.banner.isConnected) t.root.insertBefore(t.banner, t.scroller);
    else if (!opted) t.banner.remove();
    t.banner.replaceChildren(
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
    this.composer.update();
  }

  private async loadOlder(t: Thread): Promise<void> {
    if (this.thread !== t) return;
    const first = !t.pager.started;
    const loading = t.pager.load();
    if (!loading) return;
    this.renderOlderStatus(t);
    const page = await loading;
    if (!page || this.thread !== t) return;
    if ("error" in page) this.inbox.reportError(page.error, "Loading messages");
    else for (const m of page.items) t.messages.put(m);
    this.renderMessages(t, first ? "bottom" : "prepend");
    if ("items" in page && t.pager.more && sentinelInView(t.sentinel, t.scroller)) void this.loadOlder(t);
  }

  private renderOlderStatus(t: Thread): void {
    let text = "";
    if (t.pager.loading) text = t.pager.started ? "Loading earlier messages…" : "Loading messages…";
    else if (t.pager.finished) text = t.messages.size ? "Beginning of the conversation" : "No messages yet";
    t.olderStatus.textContent = text;
  }

  /** Re-renders the bubbles, oldest first under day separators, reusing each one whose message is unchanged. */
  private renderMessages(t: Thread, scroll: Scroll): void {
    const sc = t.scroller;
    const atBottom = sc.scrollHeight - sc.scrollTop - sc.clientHeight < 60;
    const fromBottom = sc.scrollHeight - sc.scrollTop;

    const nodes: HTMLElement[] = [];
    const days = new Set<string>();
    for (const m of t.messages.values().sort(oldestFirst)) {
      const day = dayKey(m.createTime);
      if (!days.has(day)) {
        days.add(day);
        nodes.push(t.days.get(day, [], () => h("div", { class: "day-sep" }, h("span", null, dayLabel(m.createTime)))));
      }
      const hit = m.id === t.highlight;
      nodes.push(t.bubbles.get(m.id, [m, hit], () => this.actions.decorate(messageBubble(m, hit), m)));
    }
    t.bubbles.prune();
    t.days.prune();
    syncChildren(t.list, nodes);
    this.renderOlderStatus(t);

    if (scroll === "bottom" || (scroll === "keep" && atBottom)) sc.scrollTop = sc.scrollHeight;
    else if (scroll === "prepend") sc.scrollTop = sc.scrollHeight - fromBottom;
  }

  private async markRead(id: string, always: boolean): Promise<void> {
    if (this.markingRead.has(id)) return;
    const c = this.inbox.conversations.get(id);
    if (!always && (!c || c.unreadCount === 0)) return;
    this.markingRead.add(id);
    // The badge clears at once; the answer (or a live event) brings the server's version.
    if (c && c.unreadCount > 0) this.inbox.upsertConversation({ ...c, unreadCount: 0 });
    try {
      const res = await this.inbox.client.markConversationRead({ conversationId: id });
      if (res.conversation) this.inbox.upsertConversation(res.conversation);
    } catch (err) {
      this.inbox.reportError(err, "Marking as read");
    } finally {
      this.markingRead.delete(id);
    }
  }
}
