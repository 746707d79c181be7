// Message search (SearchMessages) for the sidebar's search box: the newest matching messages of the conversations
// the user may see, notes included, each a link that opens its thread at that message.
import { h, userText } from "./dom.js";
import { contactDisplay, shortWhen } from "./format.js";
import { Direction, type Conversation } from "./gen/sms/v1/types_pb.js";
import type { MessageHit } from "./gen/sms/v1/sms_pb.js";
import type { Inbox } from "./inbox.js";
import { conversationHash } from "./route.js";

const PAGE_SIZE = 20;

export class MessageHits {
  readonly el: HTMLElement;
  private readonly list: HTMLElement;
  private readonly status: HTMLElement;
  private query = "";
  private generation = 0;

  constructor(private readonly inbox: Inbox) {
    this.list = h("ul", { class: "hit-list", "data-testid": "search-message-hits" });
    this.status = h("div", { class: "list-status" });
    this.el = h(
      "section",
      { class: "hits", "data-testid": "search-messages", hidden: true },
      h("h3", { class: "section-title" }, "Messages"),
      this.list,
      this.status,
    );
  }

  /** Searches for `query` ("" hides the section); answers for an earlier query are dropped. */
  async search(query: string): Promise<void> {
    this.query = query;
    const generation = ++this.generation;
    this.el.hidden = !query;
    this.el.dataset.query = query;
    this.list.replaceChildren();
    this.status.textContent = query ? "Searching…" : "";
    if (!query) return;
    try {
      const res = await this.inbox.client.searchMessages({ query, pageSize: PAGE_SIZE });
      if (generation !== this.generation) return;
      for (const hit of res.hits) if (hit.conversation) this.inbox.upsertConversation(hit.conversation);
      this.list.replaceChildren(...res.hits.map((hit) => this.row(hit)).filter((x): x is HTMLElement => !!x));
      this.status.textContent = res.hits.length ? "" : "No messages found.";
    } catch (err) {
      if (generation !== this.generation) return;
      this.status.textContent = "Search failed.";
      this.inbox.reportError(err, "Searching messages");
    }
  }

  /** Searches again (the conversations changed under a search that is showing). */
  refresh(): void {
    if (this.query) void this.search(this.query);
  }

  private row(hit: MessageHit): HTMLElement | null {
    const m = hit.message;
    if (!m) return null;
    const c: Conversation | undefined = this.inbox.conversations.get(m.conversationId) ?? hit.conversation;
    return h(
      "li",
      null,
      h(
        "a",
        {
          class: "hit",
          href: conversationHash(m.conversationId, m.id),
          "data-testid": "search-hit",
          "data-conversation-id": m.conversationId,
          "data-message-id": m.id,
        },
        h(
          "div",
          { class: "conv-top" },
          c ? userText("span", { class: "conv-contact", "data-testid": "search-hit-contact" }, contactDisplay(c)) : null,
          h("time", { class: "conv-time" }, shortWhen(m.createTime)),
        ),
        h(
          "div",
          { class: "conv-bottom" },
          m.direction === Direction.NOTE ? h("span", { class: "conv-you" }, "Note:") : null,
          userText("span", { class: "conv-preview", "data-testid": "search-hit-body" }, m.body),
        ),
      ),
    );
  }
}
