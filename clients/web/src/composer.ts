// The thread's composer: a text box, a "Note" toggle and Send. With Note on, what is written is an internal note
// (AddNote): kept in the thread, never texted to the contact, allowed while they are opted out. One composer serves
// every thread in turn, so that a conversation's draft, note mode, its unsent payload's request id and a send in
// flight survive switching to another thread and back.
//
// Below the box a live line counts characters, segments and the encoding (segment-counter.ts); beside Send, "Later"
// opens a date-time picker that makes Send schedule the message (send-later.ts). A message the server scheduled
// (asked for later, or during the contact's quiet hours) leaves a notice above the box saying when it will go.
// Typing `/` in an empty box opens the template picker (template-picker.ts).
import { Code } from "@connectrpc/connect";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { errorCode } from "./api.js";
import { h, icon, submitOnEnter } from "./dom.js";
import { fullTime, whenAt } from "./format.js";
import { MessageStatus, ScheduleReason, type Message } from "./gen/sms/v1/types_pb.js";
import type { Inbox } from "./inbox.js";
import { counterElement, renderCounter } from "./segment-counter.js";
import { SendLater } from "./send-later.js";
import { MAX_BODY_CHARS, RequestIds } from "./send-request.js";
import { attachTemplatePicker, type PlaceholderValues } from "./template-picker.js";
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
  later: SendLater;
  notice: HTMLElement;
  detachPicker: () => void;
  hooks: ComposerHooks;
}

/** What the composer area says about the last message sent from a conversation, when it did not go at once. */
interface Notice {
  kind: "quiet-hours" | "scheduled";
  text: string;
  title: string;
}

const PLACEHOLDER = "Write a message…";
const NOTE_PLACEHOLDER = "Write an internal note (not sent to the contact)…";
const MAX_HEIGHT_PX = 160;

/** The notice for a message Send answered with, when the server scheduled it instead of sending it now. */
function noticeFor(m: Message | undefined): Notice | null {
  if (!m || m.status !== MessageStatus.SCHEDULED) return null;
  const at = whenAt(m.scheduledTime);
  const title = fullTime(m.scheduledTime);
  if (m.scheduleReason === ScheduleReason.QUIET_HOURS) {
    return {
      kind: "quiet-hours",
      text: `It is quiet hours for this contact; the message will be sent at ${at || "the end of their quiet hours"}.`,
      title,
    };
  }
  return { kind: "scheduled", text: `Scheduled: the message will be sent at ${at}.`, title };
}

export class Composer {
  private readonly drafts = new Map<string, string>();
  private readonly requestIds = new RequestIds();
  private readonly inFlight = new Set<string>();
  /** Conversations whose composer is in note mode. */
  private readonly noteMode = new Set<string>();
  /** Conversations whose Send-later picker is open, and the time typed in each. */
  private readonly laterOpen = new Set<string>();
  private readonly laterValue = new Map<string, string>();
  private readonly notices = new Map<string, Notice>();
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
    const counter = counterElement();
    const later = new SendLater(this.laterValue.get(conversationId) ?? "", (open, value) => {
      if (open) this.laterOpen.add(conversationId);
      else this.laterOpen.delete(conversationId);
      if (value) this.laterValue.set(conversationId, value);
      else this.laterValue.delete(conversationId);
      this.refreshSend();
    });
    const notice = h("div", { class: "composer-notice", "data-testid": "composer-notice", role: "status" });
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
      // novalidate: the send time is checked here (send-later.ts), with words, not by the browser's bubbles.
      { class: "composer", novalidate: true, onsubmit: (e: SubmitEvent) => (e.preventDefault(), void this.submit()) },
      notice,
      later.panel,
      h("div", { class: "composer-row" }, noteToggle, input, later.toggle, send),
      counter,
    );
    const detachPicker = attachTemplatePicker(input, () => this.placeholderValues(conversationId), this.inbox.client);
    const attached: Attached = {
      conversationId,
      form,
      input,
      send,
      sendLabel,
      noteToggle,
      counter,
      later,
      notice,
      detachPicker,
      hooks,
    };
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
    if (this.laterOpen.has(conversationId)) later.setOpen(true);
    this.renderNotice(attached);
    return form;
  }

  /** Keeps the draft and lets the form go: its thread is closing. */
  detach(): void {
    const attached = this.open;
    if (!attached) return;
    this.drafts.set(attached.conversationId, attached.input.value);
    this.open = null;
    attached.detachPicker();
  }

  /** What a template's placeholders are filled with, read when one is inserted. */
  private placeholderValues(conversationId: string): PlaceholderValues {
    const c = this.inbox.conversations.get(conversationId);
    return {
      contact_name: c?.contactName ?? "",
      contact_number: c?.contactNumber ?? "",
      contact_id: c?.contactId ?? "",
      agent: this.inbox.claims.sub,
    };
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
    attached.input.disabled = opted && !note;
    attached.input.placeholder = note
      ? NOTE_PLACEHOLDER
      : opted
        ? "Sending is disabled: the contact opted out."
        : PLACEHOLDER;
    // Notes are never texted: no segments to count, nothing to schedule.
    attached.later.setAvailable(!note, !opted);
    this.renderCounter(attached);
    this.refreshSend();
  }

  private autosize(attached: Attached): void {
    const { input } = attached;
    input.style.height = "auto";
    input.style.height = `${Math.min(input.scrollHeight, MAX_HEIGHT_PX)}px`;
    this.renderCounter(attached);
    this.refreshSend();
  }

  /** The length line counts what Send would send (the trimmed text); nothing in note mode. */
  private renderCounter({ conversationId, input, counter }: Attached): void {
    renderCounter(counter, this.noteMode.has(conversationId) ? "" : input.value.trim());
  }

  private renderNotice(attached: Attached): void {
    const n = this.notices.get(attached.conversationId);
    attached.notice.dataset.kind = n?.kind ?? "";
    if (!n) {
      attached.notice.replaceChildren();
      return;
    }
    const dismiss = h(
      "button",
      { class: "btn btn-icon btn-small", type: "button", "aria-label": "Dismiss", "data-testid": "composer-notice-dismiss" },
      icon(ICONS.x),
    );
    dismiss.addEventListener("click", () => {
      this.notices.delete(attached.conversationId);
      this.renderNotice(attached);
      attached.input.focus();
    });
    attached.notice.replaceChildren(icon(ICONS.clock), h("span", { title: n.title || undefined }, n.text), dismiss);
  }

  /** Send is enabled for a loaded conversation that is not opted out, with text, and no send of it in flight. */
  private refreshSend(): void {
    const attached = this.open;
    if (!attached) return;
    const c = this.inbox.conversations.get(attached.conversationId);
    const sending = this.inFlight.has(attached.conversationId);
    const note = this.noteMode.has(attached.conversationId);
    const later = note ? null : attached.later.choice();
    attached.send.disabled =
      !c || (c.optedOut && !note) || sending || !attached.input.value.trim() || (!!later && "problem" in later);
    attached.send.classList.toggle("busy", sending);
    const label = note ? "Add note" : later ? "Schedule" : "Send";
    attached.sendLabel.textContent = label;
    attached.send.setAttribute("aria-label", label);
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
    const later = note ? null : attached.later.choice();
    if (later && "problem" in later) {
      attached.later.refresh();
      this.refreshSend();
      return;
    }
    const sendAt = later ? later.at : null;
    // A note's request id has a slot of its own: the same text as a message and as a note are two payloads; so has
    // each send time (the same text now and at 9:00 are two messages).
    const slot = note ? `note:${id}` : sendAt ? `at:${sendAt.getTime()}:${id}` : id;
    const request = this.requestIds.withId(slot, { to: c.contactNumber, body, contactId: c.contactId });
    this.inFlight.add(id);
    this.refreshSend();
    try {
      const res = note
        ? await this.inbox.client.addNote({ conversationId: id, body, requestId: request.requestId })
        : await this.inbox.client.send(sendAt ? { ...request, sendAt: timestampFromDate(sendAt) } : request);
      this.requestIds.done(slot);
      if (!note) {
        const notice = noticeFor(res.message);
        if (notice) this.notices.set(id, notice);
        else this.notices.delete(id);
      }
      if (sendAt) {
        this.laterOpen.delete(id);
        this.laterValue.delete(id);
        if (this.open === attached) attached.later.reset();
      }
      if (this.open === attached) this.renderNotice(attached);
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
