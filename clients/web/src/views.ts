// Pure element builders: a conversation row, a message bubble, ticks, an error line, the brand, the back button.
// No state lives here. Text from outside the UI goes through userText() (see dom.ts).
import { errorParts } from "./api.js";
import { h, icon, userText } from "./dom.js";
import { clockTime, contactDisplay, errorWords, fullTime, shortWhen, statusName, tickOf } from "./format.js";
import { Direction, type Conversation, type Message } from "./gen/sms/v1/types_pb.js";
import { conversationHash } from "./route.js";

export const ICONS = {
  clock: "M12 7v5l3 2|M12 3a9 9 0 1 0 0 18a9 9 0 1 0 0-18",
  check: "M5 12.5l4.5 4.5L19 7",
  checks: "M2 12.5l4.5 4.5L16 7|M11 16l1 1L22 7",
  alert: "M12 3a9 9 0 1 0 0 18a9 9 0 1 0 0-18|M12 7.5v5.5|M12 16.5v.01",
  back: "M15 18l-6-6 6-6",
  plus: "M12 5v14|M5 12h14",
  send: "M4 12l16-8-6 16-2.5-6.5z|M11.5 13.5L20 4",
  refresh: "M20 11a8 8 0 1 0-2.3 5.7|M20 4v7h-7",
  ban: "M12 3a9 9 0 1 0 0 18a9 9 0 1 0 0-18|M5.6 5.6l12.8 12.8",
  search: "M11 4a7 7 0 1 0 0 14a7 7 0 1 0 0-14|M20 20l-4-4",
  note: "M5 4h14v11l-5 5H5z|M14 20v-5h5",
  bell: "M6 16V11a6 6 0 0 1 12 0v5l2 2H4z|M10 20a2 2 0 0 0 4 0",
  user: "M12 4a4 4 0 1 0 0 8a4 4 0 1 0 0-8|M4 20a8 8 0 0 1 16 0",
  x: "M6 6l12 12|M18 6L6 18",
  edit: "M4 20h4L19 9l-4-4L4 16z",
};

function errorDetail(m: Message): string {
  return m.errorMessage || errorWords(m.errorCode, "").text;
}

/** The product's name: in the header, and bigger (`big`) on the sign-in form. */
export function brand(size: "" | "big" = ""): HTMLElement {
  return h(
    "div",
    { class: size ? `brand ${size}` : "brand" },
    h("span", { class: "brand-mark" }, "SMS"),
    h("span", { class: "brand-name" }, "Inbox"),
  );
}

/** Back to the list: the way out of a pane at phone width, where the list and the pane are not side by side. */
export function backButton(): HTMLElement {
  return h(
    "a",
    { class: "btn btn-icon back", href: "#/", "data-testid": "back-button", "aria-label": "Back to conversations" },
    icon(ICONS.back),
  );
}

/**
 * The contact as the UI names them, isolated (a name or number is user input): the contact name when there is one,
 * else the number in its region's national format; the full number in the title. A placeholder when neither.
 */
export function contactLabel(c: Conversation, attrs: Record<string, unknown>): HTMLElement {
  const shown = contactDisplay(c);
  if (!shown) return h("span", attrs, "(no number)");
  return userText("span", { ...attrs, title: c.contactNumber || undefined, "data-named": c.contactName.trim() ? "true" : "false" }, shown);
}

/** A conversation's labels as chips (`testid` on each), each label isolated. */
export function labelChips(labels: readonly string[], testid: string): HTMLElement[] {
  return labels.map((l) => userText("span", { class: "chip chip-label", "data-testid": testid, "data-label": l }, l));
}

/** A label, then a value from outside the UI in its own isolated element: `ID <contact id>`, `@<owner>`. */
export function labelled(label: string, value: string, attrs: Record<string, unknown> | null = null): HTMLElement {
  return h("span", attrs, label, userText("span", null, value));
}

/** `<what>: <message> (<code>)`, the message isolated: the server's messages may quote what a user sent. */
export function errorLine(err: unknown, what = ""): HTMLElement {
  const { message, code } = errorParts(err);
  return h(
    "span",
    null,
    what ? `${what}: ` : "",
    message ? userText("span", null, message) : null,
    code ? (message ? ` (${code})` : code) : "",
  );
}

/** A row of the conversation list; `showOwner` adds the owner's chip (admins, on others' conversations). */
export function conversationItem(c: Conversation, active: boolean, showOwner: boolean): HTMLElement {
  const unread = c.unreadCount > 0;
  const mine = !!c.lastMessagePreview && c.lastMessageDirection === Direction.OUTBOUND;
  const note = !!c.lastMessagePreview && c.lastMessageDirection === Direction.NOTE;
  const previewAttrs = { class: "conv-preview", "data-testid": "conversation-preview" };
  return h(
    "li",
    { class: "conv-li" },
    h(
      "a",
      {
        class: `conv${active ? " active" : ""}${unread ? " unread" : ""}`,
        href: conversationHash(c.id),
        "data-testid": "conversation-item",
        "data-conversation-id": c.id,
        "data-contact": c.contactNumber,
        "data-assignee": c.owner,
        "data-unread": String(c.unreadCount),
        "aria-current": active ? "true" : undefined,
      },
      h(
        "div",
        { class: "conv-top" },
        contactLabel(c, { class: "conv-contact", "data-testid": "conversation-contact" }),
        h("time", { class: "conv-time", title: fullTime(c.lastMessageTime) }, shortWhen(c.lastMessageTime)),
      ),
      h(
        "div",
        { class: "conv-bottom" },
        mine ? h("span", { class: "conv-you", "data-testid": "conversation-preview-you" }, "You:") : null,
        note ? h("span", { class: "conv-you", "data-testid": "conversation-preview-note" }, "Note:") : null,
        c.lastMessagePreview
          ? userText("span", previewAttrs, c.lastMessagePreview)
          : h("span", previewAttrs, "No messages yet"),
        unread
          ? h(
              "span",
              { class: "badge", "data-testid": "unread-badge", "aria-label": `${c.unreadCount} unread` },
              c.unreadCount > 99 ? "99+" : String(c.unreadCount),
            )
          : null,
      ),
      c.contactId || c.optedOut || showOwner || c.labels.length
        ? h(
            "div",
            { class: "conv-meta" },
            c.contactId ? labelled("ID ", c.contactId, { class: "chip", "data-testid": "conversation-contact-id" }) : null,
            c.optedOut ? h("span", { class: "chip chip-warn" }, "Opted out") : null,
            showOwner ? labelled("@", c.owner, { class: "chip chip-owner", title: "Assignee", "data-testid": "conversation-assignee" }) : null,
            labelChips(c.labels, "conversation-label"),
          )
        : null,
    ),
  );
}

function safeUrl(url: string): string | null {
  try {
    const u = new URL(url);
    return u.protocol === "http:" || u.protocol === "https:" ? u.href : null;
  } catch {
    return null;
  }
}

export function statusTick(m: Message): HTMLElement | null {
  if (m.direction === Direction.INBOUND || m.direction === Direction.NOTE) return null;
  const tick = tickOf(m.status);
  const name = statusName(m.status);
  const label = name.charAt(0).toUpperCase() + name.slice(1).replace(/_/g, " ");
  let title = label;
  let glyph: SVGSVGElement | string;
  switch (tick) {
    case "pending":
      glyph = icon(ICONS.clock);
      break;
    case "sent":
      glyph = icon(ICONS.check);
      break;
    case "delivered":
    case "read":
      glyph = icon(ICONS.checks);
      break;
    case "failed": {
      glyph = icon(ICONS.alert);
      const parts = [label];
      if (m.errorCode) parts.push(`error ${m.errorCode}`);
      const detail = errorDetail(m);
      title = parts.join(": ") + (detail ? ` – ${detail}` : "");
      break;
    }
    case "canceled":
      glyph = icon(ICONS.ban);
      break;
    default:
      glyph = "";
  }
  return h(
    "span",
    { class: `tick tick-${tick}`, "data-testid": "status-tick", "data-status": name, title, "aria-label": title },
    glyph,
  );
}

/** One message; `highlighted` marks a search hit jumped to. Notes are styled apart and carry their writer. */
export function messageBubble(m: Message, highlighted = false): HTMLElement {
  const note = m.direction === Direction.NOTE;
  const out = m.direction !== Direction.INBOUND;
  const status = note ? "note" : statusName(m.status);
  const failed = !note && tickOf(m.status) === "failed";
  const media = m.media
    .map((md) => ({ url: safeUrl(md.url), type: md.contentType }))
    .filter((x): x is { url: string; type: string } => x.url !== null);
  return h(
    "div",
    { class: `msg-row ${note ? "note" : out ? "out" : "in"}` },
    h(
      "div",
      {
        class: `bubble${failed ? " failed" : ""}${note ? " bubble-note" : ""}${highlighted ? " hit" : ""}`,
        "data-testid": "message-bubble",
        "data-message-id": m.id,
        "data-status": status,
        "data-direction": note ? "note" : out ? "outbound" : "inbound",
        "data-highlighted": highlighted ? "true" : undefined,
      },
      note
        ? h(
            "div",
            { class: "bubble-note-head", "data-testid": "note-label" },
            icon(ICONS.note),
            h("span", { class: "note-kind" }, "Internal note"),
            m.author ? [" · ", userText("span", { "data-testid": "note-author" }, m.author)] : null,
          )
        : null,
      m.body ? userText("div", { class: "bubble-body", "data-testid": "message-body" }, m.body) : null,
      media.length
        ? h(
            "div",
            { class: "bubble-media" },
            media.map((x, i) =>
              h(
                "a",
                { href: x.url, target: "_blank", rel: "noopener noreferrer" },
                `Attachment ${i + 1}`,
                x.type ? [" (", userText("span", null, x.type), ")"] : null,
              ),
            ),
          )
        : null,
      failed
        ? h(
            "div",
            { class: "bubble-error", "data-testid": "message-error" },
            `Not delivered${m.errorCode ? ` · ${m.errorCode}` : ""}`,
            errorDetail(m) ? [" ", userText("span", null, errorDetail(m))] : null,
          )
        : null,
      h(
        "div",
        { class: "bubble-meta" },
        h("time", { title: fullTime(m.createTime) }, clockTime(m.createTime)),
        statusTick(m),
      ),
    ),
  );
}
