// The sidebar: the conversations of the chosen view and filters (and search), newest activity first, paged in by
// scrolling down; the app keeps it live by upserting into the shared store and re-rendering. A row shows while its
// conversation, as held now, passes the view's test: one assigned away leaves Mine at once, one assigned in joins.
import { KeyedElements, h, icon, sentinelInView, syncChildren, watchSentinel } from "./dom.js";
import { tsMillis } from "./format.js";
import type { Conversation } from "./gen/sms/v1/types_pb.js";
import { showsOwner, type Inbox } from "./inbox.js";
import { ListControls } from "./list-controls.js";
import { defaultQuery, listRequest, matches, sameQuery, type ListQuery } from "./list-query.js";
import { Pager } from "./pager.js";
import { MessageHits } from "./search-results.js";
import type { Counts } from "./summary.js";
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
  private query: ListQuery;
  private readonly controls: ListControls;
  private readonly hits: MessageHits;
  /** The last conversation of the last page loaded: rows older than it show once paging reaches them. */
  private boundary: Conversation | null = null;
  /** With free text: the ids the server matched (the text is the server's to match). */
  private readonly matched = new Set<string>();

  constructor(private readonly inbox: Inbox) {
    this.query = defaultQuery(inbox.isAdmin);
    this.controls = new ListControls(this.query, inbox.isAdmin, (q) => this.setQuery(q));
    this.hits = new MessageHits(inbox);
    this.list = h("ul", { class: "conv-list", "data-testid": "conversation-list" });
    this.status = h("div", { class: "list-status" });
    this.sentinel = h("div", { class: "sentinel", "data-testid": "conversation-list-sentinel" });
    this.scroller = h("div", { class: "sidebar-scroll" }, this.hits.el, this.list, this.status, this.sentinel);
    this.el = h(
      "aside",
      { class: "sidebar" },
      h(
        "div",
        { class: "sidebar-head" },
        h("h2", null, "Conversations"),
        h(
          "a",
          { class: "btn btn-primary", href: "#/new", "data-testid": "new-message-button" },
          icon(ICONS.plus),
          "New message",
        ),
      ),
      this.controls.el,
      this.scroller,
    );
    this.el.dataset.view = this.query.view;
    this.pager = new Pager((pageToken) => {
      const q = this.query;
      return inbox.client
        .listConversations({ pageSize: PAGE_SIZE, pageToken, ...listRequest(q, inbox.claims.sub, inbox.isAdmin) })
        .then((res) => ({ items: res.conversations, nextPageToken: res.nextPageToken }));
    });
    this.observer = watchSentinel(this.sentinel, this.scroller, 200, () => void this.loadMore());
  }

  destroy(): void {
    this.observer.disconnect();
    this.controls.destroy();
  }

  /** The summary's counts, on the view tabs. */
  showCounts(counts: Counts): void {
    this.controls.showCounts(counts);
  }

  /** Another view, filter or search: list again from the first page (the store keeps what it knows). */
  private setQuery(q: ListQuery): void {
    if (sameQuery(q, this.query)) return;
    const textChanged = q.text !== this.query.text;
    this.query = q;
    this.el.dataset.view = q.view;
    this.pager.reset();
    this.boundary = null;
    this.matched.clear();
    this.error = null;
    this.render();
    this.scroller.scrollTop = 0;
    if (textChanged) void this.hits.search(q.text);
    void this.loadMore();
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
      for (const c of page.items) {
        this.inbox.conversations.put(c);
        this.matched.add(c.id);
      }
      const last = page.items[page.items.length - 1];
      if (last) this.boundary = last;
    }
    this.render();
    // The sentinel may still be in view (short pages, tall screens): keep filling.
    if (this.error === null && this.pager.more && sentinelInView(this.sentinel, this.scroller)) void this.loadMore();
  }

  /** Events were missed that cannot be replayed: forget every conversation and list them again. */
  reload(): void {
    this.pager.reset();
    this.boundary = null;
    this.matched.clear();
    this.inbox.conversations.clear();
    this.render();
    void this.loadMore();
    this.hits.refresh();
  }

  /** A stream began without a resume token: merge the newest page, in case something changed before it began. */
  refreshHead(): void {
    this.pager
      .first()
      .then((items) => {
        if (!items) return;
        for (const c of items) {
          this.inbox.conversations.put(c);
          this.matched.add(c.id);
        }
        this.render();
      })
      .catch((err) => this.inbox.reportError(err, "Refreshing conversations"));
  }

  /** Whether the row of `c` belongs in the list now: the view's test, within the pages loaded, and matched text. */
  private shows(c: Conversation): boolean {
    // The open conversation stays while it is being read, though reading it takes it out of an Unread filter.
    const q = c.id === this.activeId && this.matched.has(c.id) ? { ...this.query, unread: false } : this.query;
    if (!matches(q, c, this.inbox.claims.sub)) return false;
    if (this.query.text && !this.matched.has(c.id)) return false;
    if (!this.pager.started) return false;
    const b = this.boundary;
    return !b || this.pager.finished || tsMillis(c.lastMessageTime) >= tsMillis(b.lastMessageTime);
  }

  render(): void {
    const rows = this.inbox.conversations
      .values()
      .filter((c) => this.shows(c))
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
    else if (this.pager.finished && this.list.childElementCount === 0 && !failed) {
      text = this.query.text ? "No conversations found." : "No conversations here.";
    }
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
