// The sidebar: the conversations the user may see, newest activity first, paged in by scrolling down; the app keeps
// it live by upserting into the shared store and re-rendering.
import { KeyedElements, h, icon, sentinelInView, syncChildren, watchSentinel } from "./dom.js";
import { tsMillis } from "./format.js";
import type { Conversation } from "./gen/sms/v1/types_pb.js";
import { showsOwner, type Inbox } from "./inbox.js";
import { Pager } from "./pager.js";
import { ICONS, conversationItem, errorLine } from "./views.js";

const PAGE_SIZE = 30;

/** Newest activity first; ties by last update, then by id, so the order never flickers. */
function newestFirst(a: Conversation, b: Conversation): number {
  return (
    tsMillis(b.lastMessageTime) - tsMillis(a.lastMessageTime) ||
    tsMillis(b.updateTime) - tsMillis(a.updateTime) ||
    (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
  );
}

export class ConversationList {
  readonly el: HTMLElement;
  private readonly list: HTMLElement;
  private readonly status: HTMLElement;
  private readonly sentinel: HTMLElement;
  private readonly scroller: HTMLElement;
  private readonly observer: IntersectionObserver;
  private readonly pager: Pager<Conversation>;
  private readonly rows = new KeyedElements();
  /** Why the last page failed, shown with a Retry until the next attempt; null when it did not. */
  private error: unknown = null;
  private activeId = "";

  constructor(private readonly inbox: Inbox) {
    this.list = h("ul", { class: "conv-list", "data-testid": "conversation-list" });
    this.status = h("div", { class: "list-status" });
    this.sentinel = h("div", { class: "sentinel", "data-testid": "conversation-list-sentinel" });
    this.scroller = h("div", { class: "sidebar-scroll" }, this.list, this.status, this.sentinel);
    this.el = h(
      "aside",
      { class: "sidebar" },
      h(
        "div",
        { class: "sidebar-head" },
        h("h2", null, inbox.isAdmin ? "All conversations" : "Conversations"),
        h(
          "a",
          { class: "btn btn-primary", href: "#/new", "data-testid": "new-message-button" },
          icon(ICONS.plus),
          "New message",
        ),
      ),
      this.scroller,
    );
    this.pager = new Pager((pageToken) =>
      inbox.client
        .listConversations({ pageSize: PAGE_SIZE, pageToken })
        .then((res) => ({ items: res.conversations, nextPageToken: res.nextPageToken })),
    );
    this.observer = watchSentinel(this.sentinel, this.scroller, 200, () => void this.loadMore());
  }

  destroy(): void {
    this.observer.disconnect();
  }

  /** Marks the open conversation's row ("" when none is open). */
  select(id: string): void {
    this.activeId = id;
    this.render();
  }

  async loadMore(): Promise<void> {
    const loading = this.pager.load();
    if (!loading) return;
    this.error = null;
    this.renderStatus();
    const page = await loading;
    if (!page) return;
    if ("error" in page) {
      this.error = page.error;
      this.inbox.reportError(page.error, "Loading conversations");
    } else {
      for (const c of page.items) this.inbox.conversations.put(c);
    }
    this.render();
    // The sentinel may still be in view (short pages, tall screens): keep filling.
    if (this.error === null && this.pager.more && sentinelInView(this.sentinel, this.scroller)) void this.loadMore();
  }

  /** Events were missed that cannot be replayed: forget every conversation and list them again. */
  reload(): void {
    this.pager.reset();
    this.inbox.conversations.clear();
    this.render();
    void this.loadMore();
  }

  /** A stream began without a resume token: merge the newest page, in case something changed before it began. */
  refreshHead(): void {
    this.pager
      .first()
      .then((items) => {
        if (!items) return;
        for (const c of items) this.inbox.conversations.put(c);
        this.render();
      })
      .catch((err) => this.inbox.reportError(err, "Refreshing conversations"));
  }

  render(): void {
    const rows = this.inbox.conversations
      .values()
      .sort(newestFirst)
      .map((c) => {
        const active = c.id === this.activeId;
        return this.rows.get(c.id, [c, active], () => conversationItem(c, active, showsOwner(this.inbox, c)));
      });
    this.rows.prune();
    syncChildren(this.list, rows);
    this.renderStatus();
  }

  private renderStatus(): void {
    const loading = this.pager.loading;
    const failed = this.error !== null && !loading;
    let text = "";
    if (loading) text = "Loading…";
    else if (this.pager.finished && this.inbox.conversations.size === 0 && !failed) text = "No conversations yet.";
    this.status.textContent = text;
    this.status.classList.toggle("error", failed);
    if (failed) {
      this.status.append(
        "Could not load conversations. ",
        errorLine(this.error),
        " ",
        h("button", { class: "link", type: "button", onclick: () => void this.loadMore() }, "Retry"),
      );
    }
  }
}
