// The thread's composer: a text box, a "Note" toggle and Send. With Note on, what is written is an internal note
// (AddNote): kept in the thread, never texted to the contact, allowed while they are opted out. One composer serves
// every thread in turn, so that a conversation's draft, note mode, its unsent payload's request id and a send in
// flight survive switching to another thread and back.
import { Code } from "@connectrpc/connect";
import { errorCode } from "./api.js";
import { h, icon, submitOnEnter } from "./dom.js";
import type { Message } from "./gen/sms/v1/types_pb.js";
import type { Inbox } from "./inbox.js";
import { MAX_BODY_CHARS, RequestIds } from "./send-request.js";
import { ICONS } from "./views.js";

/** What the thread showing the form wants to know. */
export interface ComposerHooks {
  /** A send succeeded; `message` is what the server stored, to show at once. */
  sent(message: Message | undefined): void;
  /** Whether a send from this conversation is in flight (the thread's data-sending). */
  sending(inFlight: boolean): void;
}

interface Attached {
  conversationId: string;
  form: HTMLFormElement;
  input: HTMLTextAreaElement;
  send: HTMLButtonElement;
  sendLabel: HTMLElement;
  noteToggle: HTMLButtonElement;
  counter: HTMLElement;
  hooks: ComposerHooks;
}

const PLACEHOLDER = "Write a message…";
const NOTE_PLACEHOLDER = "Write an internal note (not sent to the contact)…";
const MAX_HEIGHT_PX = 160;
/** The counter appears only once a message gets long enough for its length to matter. */
const COUNT_FROM_CHARS = 120;

export class Composer {
  private readonly drafts = new Map<string, string>();
  private readonly requestIds = new RequestIds();
  private readonly inFlight = new Set<string>();
  /** Conversations whose composer is in note mode. */
  private readonly noteMode = new Set<string>();
  private open: Attached | null = null;

  constructor(private readonly inbox: Inbox) {}

  /** A new form for `conversationId`, holding its draft; it replaces the form attached before. */
  attach(conversationId: string, hooks: ComposerHooks): HTMLFormElement {
    this.detach();
    const input = h("textarea", {
      class: "composer-input",
      rows: 1,
      "data-testid": "composer-input",
      placeholder: PLACEHOLDER,
      title: "Enter sends · Shift+Enter adds a line",
      "aria-label": "Message",
      maxlength: MAX_BODY_CHARS,
    });
    input.value = this.drafts.get(conversationId) ?? "";
    const sendLabel = h("span", { class: "send-label" }, "Send");
    const send = h(
      "button",
      { class: "btn btn-primary send", type: "submit", "data-testid": "send-button", "aria-label": "Send" },
      icon(ICONS.send),
      sendLabel,
    );
    const counter = h("span", { class: "counter" });
    const noteToggle = h(
      "button",
      {
        class: "btn btn-ghost note-toggle",
        type: "button",
        "data-testid": "note-toggle",
        "aria-pressed": "false",
        title: "Write an internal note instead of a message",
      },
      icon(ICONS.note),
      h("span", { class: "note-toggle-label" }, "Note"),
    );
    const form = h(
      "form",
      { class: "composer", onsubmit: (e: SubmitEvent) => (e.preventDefault(), void this.submit()) },
      noteToggle,
      input,
      counter,
      send,
    );
    const attached: Attached = { conversationId, form, input, send, sendLabel, noteToggle, counter, hooks };
    noteToggle.addEventListener("click", () => {
      if (this.noteMode.has(conversationId)) this.noteMode.delete(conversationId);
      else this.noteMode.add(conversationId);
      this.update();
      input.focus();
    });
    input.addEventListener("input", () => {
      this.drafts.set(conversationId, input.value);
      this.autosize(attached);
    });
    submitOnEnter(input, () => void this.submit());
    this.open = attached;
    return form;
  }

  /** Keeps the draft and lets the form go: its thread is closing. */
  detach(): void {
    if (this.open) this.drafts.set(this.open.conversationId, this.open.input.value);
    this.open = null;
  }

  /**
   * Once the form is in the document: fits the box to its draft, and focuses it on wide screens only, where no
   * on-screen keyboard would pop up over the thread.
   */
  settle(): void {
    const attached = this.open;
    if (!attached) return;
    requestAnimationFrame(() => this.autosize(attached));
    if (window.matchMedia("(min-width: 721px)").matches) attached.input.focus({ preventScroll: true });
  }

  /** The conversation changed (an opt-out disables the box, except for notes), or the note mode did. */
  update(): void {
    const attached = this.open;
    if (!attached) return;
    const note = this.noteMode.has(attached.conversationId);
    const opted = !!this.inbox.conversations.get(attached.conversationId)?.optedOut;
    attached.form.classList.toggle("note-mode", note);
    attached.form.dataset.mode = note ? "note" : "message";
    attached.noteToggle.setAttribute("aria-pressed", String(note));
    attached.sendLabel.textContent = note ? "Add note" : "Send";
    attached.send.setAttribute("aria-label", note ? "Add note" : "Send");
    attached.input.disabled = opted && !note;
    attached.input.placeholder = note
      ? NOTE_PLACEHOLDER
      : opted
        ? "Sending is disabled: the contact opted out."
        : PLACEHOLDER;
    this.refreshSend();
  }

  private autosize({ input, counter }: Attached): void {
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, MAX_HEIGHT_PX)}px`;
    const n = input.value.length;
    counter.textContent = n > COUNT_FROM_CHARS ? `${n}/${MAX_BODY_CHARS}` : "";
    this.refreshSend();
  }

  /** Send is enabled for a loaded conversation that is not opted out, with text, and no send of it in flight. */
  private refreshSend(): void {
    const attached = this.open;
    if (!attached) return;
    const c = this.inbox.conversations.get(attached.conversationId);
    const sending = this.inFlight.has(attached.conversationId);
    const note = this.noteMode.has(attached.conversationId);
    attached.send.disabled = !c || (c.optedOut && !note) || sending || !attached.input.value.trim();
    attached.send.classList.toggle("busy", sending);
    attached.hooks.sending(sending);
  }

  private async submit(): Promise<void> {
    const attached = this.open;
    if (!attached) return;
    const id = attached.conversationId;
    const c = this.inbox.conversations.get(id);
    const body = attached.input.value.trim();
    const note = this.noteMode.has(id);
    if (!c || !body || (c.optedOut && !note) || this.inFlight.has(id)) return;
    // A note's request id has a slot of its own: the same text as a message and as a note are two payloads.
    const slot = note ? `note:${id}` : id;
    const request = this.requestIds.withId(slot, { to: c.contactNumber, body, contactId: c.contactId });
    this.inFlight.add(id);
    this.refreshSend();
    try {
      const res = note
        ? await this.inbox.client.addNote({ conversationId: id, body, requestId: request.requestId })
        : await this.inbox.client.send(request);
      this.requestIds.done(slot);
      if (this.drafts.get(id)?.trim() === body) this.drafts.set(id, "");
      // Only while that form is still the one shown, and still holds what was sent (not something typed since).
      if (this.open === attached && attached.input.value.trim() === body) {
        attached.input.value = "";
        attached.input.dispatchEvent(new Event("input"));
      }
      attached.hooks.sent(res.message);
      // The live CONVERSATION_UPDATED event does this too; one read keeps the row right while offline.
      void this.inbox.fetchConversation(id);
    } catch (err) {
      this.inbox.reportError(err, note ? "Note not added" : "Message not sent");
      if (errorCode(err) === Code.FailedPrecondition) void this.inbox.fetchConversation(id);
    } finally {
      this.inFlight.delete(id);
      this.refreshSend();
    }
  }
}
