// The new-message form: text any number (with an optional CRM contact id), then open that message's conversation.
import { h, icon, submitOnEnter } from "./dom.js";
import type { Inbox } from "./inbox.js";
import { conversationHash, go } from "./route.js";
import { MAX_BODY_CHARS, RequestIds } from "./send-request.js";
import { ICONS, backButton, errorLine } from "./views.js";

/** The form has one payload at a time, so one request-id slot. */
const SLOT = "new";

interface Fields {
  to: HTMLInputElement;
  contactId: HTMLInputElement;
  body: HTMLTextAreaElement;
  send: HTMLButtonElement;
  error: HTMLElement;
}

export class NewMessageForm {
  private readonly requestIds = new RequestIds();
  /** Outlives the form, which is rebuilt each time it opens, so a send in flight is not started twice. */
  private sending = false;

  /** `pane` is where the form shows (the main pane, shared with the other views). */
  constructor(
    private readonly inbox: Inbox,
    private readonly pane: HTMLElement,
  ) {}

  /** Shows a fresh form, focused on the number. */
  open(): void {
    const fields: Fields = {
      to: h("input", {
        type: "tel",
        class: "input",
        id: "new-to",
        "data-testid": "new-to",
        placeholder: "+1 415 555 0100",
        autocomplete: "off",
        required: true,
      }),
      contactId: h("input", {
        type: "text",
        class: "input",
        id: "new-contact-id",
        "data-testid": "new-contact-id",
        placeholder: "optional",
        autocomplete: "off",
      }),
      body: h("textarea", {
        class: "input",
        id: "new-body",
        rows: 5,
        maxlength: MAX_BODY_CHARS,
        "data-testid": "new-body",
        placeholder: "Message",
        required: true,
      }),
      send: h(
        "button",
        { class: "btn btn-primary", type: "submit", "data-testid": "new-send" },
        icon(ICONS.send),
        "Send",
      ),
      error: h("div", { class: "form-error", "data-testid": "new-error", role: "alert" }),
    };
    submitOnEnter(fields.body, () => void this.submit(fields));
    this.pane.replaceChildren(
      h(
        "section",
        { class: "new-message", "data-testid": "new-message-form" },
        h("div", { class: "main-head" }, backButton(), h("h2", null, "New message")),
        h(
          "form",
          { class: "new-form", onsubmit: (e: SubmitEvent) => (e.preventDefault(), void this.submit(fields)) },
          h("label", { for: "new-to" }, "To (phone number)"),
          fields.to,
          h("label", { for: "new-contact-id" }, "CRM contact ID"),
          fields.contactId,
          h("label", { for: "new-body" }, "Message"),
          fields.body,
          fields.error,
          h("div", { class: "form-actions" }, h("a", { class: "btn btn-ghost", href: "#/" }, "Cancel"), fields.send),
        ),
      ),
    );
    fields.to.focus();
  }

  private async submit({ to, contactId, body, send, error }: Fields): Promise<void> {
    const payload = { to: to.value.trim(), body: body.value.trim(), contactId: contactId.value.trim() };
    error.textContent = "";
    if (!payload.to) return void ((error.textContent = "Enter a phone number."), to.focus());
    if (!payload.body) return void ((error.textContent = "Write a message."), body.focus());
    if (this.sending) return;
    const request = this.requestIds.withId(SLOT, payload);
    this.sending = true;
    send.disabled = true;
    try {
      const res = await this.inbox.client.send(request);
      this.requestIds.done(SLOT);
      const conversationId = res.message?.conversationId;
      if (conversationId) {
        try {
          const got = await this.inbox.client.getConversation({ conversationId });
          if (got.conversation) this.inbox.conversations.put(got.conversation);
        } catch {
          // The thread view fetches it again.
        }
        go(conversationHash(conversationId));
      }
    } catch (err) {
      error.replaceChildren(errorLine(err));
      this.inbox.reportError(err, "Message not sent");
    } finally {
      this.sending = false;
      send.disabled = false;
    }
  }
}
