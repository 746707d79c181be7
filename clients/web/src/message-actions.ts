// What an outbound bubble says and offers beyond views.ts's messageBubble: a SCHEDULED message's time (and whether
// quiet hours put it there) with Cancel (CancelMessage); a CANCELED one marked so; a FAILED/UNDELIVERED one's error
// in words with Retry (RetryMessage), or "Retried" pointing at its retry; a retry's "Retry of an earlier message".
//
// Retry is idempotent: each failed message keeps one request id until a RetryMessage of it succeeds, so a double
// click or a retry after a lost answer sends once. A refusal (FAILED_PRECONDITION: already sending, already retried,
// opted out …) shows the server's words in the bubble, and the message is read again to show what changed.
import { Code } from "@connectrpc/connect";
import { errorCode, errorParts } from "./api.js";
import { h, icon, userText } from "./dom.js";
import { NOT_RETRYABLE_CODES, errorWords, fullTime, whenAt } from "./format.js";
import { Direction, MessageStatus, ScheduleReason, type Message } from "./gen/sms/v1/types_pb.js";
import type { Inbox } from "./inbox.js";
import { conversationHash } from "./route.js";
import { newRequestId } from "./send-request.js";
import { ICONS } from "./views.js";

const RETRY_ICON = "M4 4v6h6|M4 10a8 8 0 1 1-1 5";

/** "Not delivered · error 30003: Unreachable handset"; the stored message (isolated) for codes not in the table. */
export function failureLine(m: Message): (Node | string)[] {
  const { text, known } = errorWords(m.errorCode, m.errorMessage);
  const parts: (Node | string)[] = ["Not delivered"];
  if (m.errorCode) parts.push(` · error ${m.errorCode}`);
  if (text) parts.push(m.errorCode ? ": " : " · ", known ? text : userText("span", null, text));
  return parts;
}

export class MessageActions {
  /** Failed message id → the request id of its retry, kept until a RetryMessage of it succeeds. */
  private readonly retryIds = new Map<string, string>();
  /** Messages with a Cancel or Retry call in flight. */
  private readonly busy = new Set<string>();
  /** Message id → the server's refusal of the last action on it. */
  private readonly refusals = new Map<string, string>();

  /** `show` puts a newer version of a message (from an answer) into the open thread. */
  constructor(
    private readonly inbox: Inbox,
    private readonly show: (m: Message) => void,
  ) {}

  /** Adds the lines and buttons of `m`'s state to its bubble (`row` from messageBubble); returns `row`. */
  decorate(row: HTMLElement, m: Message): HTMLElement {
    const bubble = row.querySelector<HTMLElement>('[data-testid="message-bubble"]');
    if (!bubble || m.direction !== Direction.OUTBOUND) return row;
    const meta = bubble.querySelector(".bubble-meta");
    const add = (el: HTMLElement): void => void bubble.insertBefore(el, meta);

    if (m.retryOf) {
      bubble.dataset.retryOf = m.retryOf;
      bubble.insertBefore(
        h(
          "div",
          { class: "bubble-line bubble-retry-of" },
          icon(RETRY_ICON),
          this.jump(m, m.retryOf, "Retry of an earlier message", "retry-of"),
        ),
        bubble.firstChild,
      );
    }
    if (m.retriedBy) bubble.dataset.retriedBy = m.retriedBy;

    switch (m.status) {
      case MessageStatus.SCHEDULED:
        bubble.classList.add("scheduled");
        add(this.scheduleLine(m));
        break;
      case MessageStatus.CANCELED:
        bubble.classList.add("canceled");
        add(
          h(
            "div",
            { class: "bubble-line", "data-testid": "message-canceled" },
            icon(ICONS.ban),
            h("span", null, "Canceled: not sent"),
          ),
        );
        break;
      case MessageStatus.FAILED:
      case MessageStatus.UNDELIVERED: {
        bubble.querySelector('[data-testid="message-error"]')?.replaceChildren(...failureLine(m));
        add(this.retryLine(m));
        break;
      }
      default:
        break;
    }
    const refusal = this.refusals.get(m.id);
    if (refusal) {
      add(userText("div", { class: "bubble-refusal", role: "alert", "data-testid": "message-action-error" }, refusal));
    }
    return row;
  }

  private scheduleLine(m: Message): HTMLElement {
    const quiet = m.scheduleReason === ScheduleReason.QUIET_HOURS;
    const busy = this.busy.has(m.id);
    const cancel = h(
      "button",
      {
        class: "btn btn-small bubble-action",
        type: "button",
        "data-testid": "cancel-message",
        "aria-label": "Cancel this scheduled message",
        disabled: busy,
      },
      busy ? "Canceling…" : "Cancel",
    );
    cancel.addEventListener("click", () => void this.cancel(m, cancel));
    return h(
      "div",
      { class: "bubble-line bubble-schedule", "data-testid": "message-schedule", "data-reason": quiet ? "quiet-hours" : "requested" },
      icon(ICONS.clock),
      h(
        "span",
        null,
        "Scheduled for ",
        h("time", { title: fullTime(m.scheduledTime) }, whenAt(m.scheduledTime) || "later"),
        quiet ? " — quiet hours" : "",
      ),
      cancel,
    );
  }

  private retryLine(m: Message): HTMLElement {
    if (m.retriedBy) {
      return h(
        "div",
        { class: "bubble-line" },
        icon(ICONS.check),
        this.jump(m, m.retriedBy, "Retried", "retried-link", "Show the retry"),
      );
    }
    if (NOT_RETRYABLE_CODES.has(m.errorCode)) {
      return h("div", { class: "bubble-line" }, "This number cannot receive SMS: retrying would fail too.");
    }
    const busy = this.busy.has(m.id);
    const opted = !!this.inbox.conversations.get(m.conversationId)?.optedOut;
    const retry = h(
      "button",
      {
        class: "btn btn-small bubble-action",
        type: "button",
        "data-testid": "retry-message",
        "aria-label": "Send this message again",
        title: opted ? "The contact opted out" : "Send this message again",
        disabled: busy || opted,
      },
      icon(RETRY_ICON),
      busy ? "Retrying…" : "Retry",
    );
    retry.addEventListener("click", () => void this.retry(m, retry));
    return h("div", { class: "bubble-line" }, retry);
  }

  /** A link to another message of the thread: scrolls to it when it is shown, else opens the thread at it. */
  private jump(m: Message, target: string, text: string, testid: string, label = ""): HTMLElement {
    const a = h(
      "a",
      {
        class: "bubble-link",
        href: conversationHash(m.conversationId, target),
        "data-testid": testid,
        "data-target": target,
        "aria-label": label || undefined,
      },
      text,
    );
    a.addEventListener("click", (e) => {
      const el = document.querySelector<HTMLElement>(`[data-testid="message-bubble"][data-message-id="${CSS.escape(target)}"]`);
      if (!el) return; // not loaded yet: the route opens the thread at it, loading older pages until it shows
      e.preventDefault();
      el.scrollIntoView({ block: "center", behavior: "smooth" });
      el.classList.remove("flash");
      void el.offsetWidth; // restart the animation
      el.classList.add("flash");
    });
    return a;
  }

  private async cancel(m: Message, button: HTMLButtonElement): Promise<void> {
    if (this.busy.has(m.id)) return;
    this.begin(m.id, button, "Canceling…");
    try {
      const res = await this.inbox.client.cancelMessage({ messageId: m.id });
      if (res.message) this.show(res.message);
    } catch (err) {
      this.failed(err, m, "Not canceled");
    } finally {
      this.end(m, "cancel-message", "Cancel");
    }
  }

  private async retry(m: Message, button: HTMLButtonElement): Promise<void> {
    if (this.busy.has(m.id)) return;
    let requestId = this.retryIds.get(m.id);
    if (!requestId) {
      requestId = newRequestId();
      this.retryIds.set(m.id, requestId);
    }
    this.begin(m.id, button, "Retrying…");
    try {
      const res = await this.inbox.client.retryMessage({ messageId: m.id, requestId });
      this.retryIds.delete(m.id);
      if (res.message) this.show(res.message);
      // The failed message now names its retry (retried_by); a live event brings it too.
      void this.reread(m.id);
    } catch (err) {
      this.failed(err, m, "Not retried");
    } finally {
      this.end(m, "retry-message", "Retry");
    }
  }

  private begin(id: string, button: HTMLButtonElement, busyText: string): void {
    this.busy.add(id);
    this.refusals.delete(id);
    button.disabled = true;
    button.lastChild?.replaceWith(busyText);
  }

  /** The call is over: the action's button (this one, or the one of a bubble rebuilt meanwhile) works again. */
  private end(m: Message, testid: string, text: string): void {
    this.busy.delete(m.id);
    const opted = testid === "retry-message" && !!this.inbox.conversations.get(m.conversationId)?.optedOut;
    const selector = `[data-message-id="${CSS.escape(m.id)}"] [data-testid="${testid}"]`;
    for (const button of document.querySelectorAll<HTMLButtonElement>(selector)) {
      button.disabled = opted;
      button.lastChild?.replaceWith(text);
    }
  }

  /** A refusal shows in the bubble (and the message is read again: its state moved on); anything else is a toast. */
  private failed(err: unknown, m: Message, what: string): void {
    if (errorCode(err) === Code.FailedPrecondition) {
      this.refusals.set(m.id, errorParts(err).message || "Refused by the server.");
      void this.reread(m.id, m);
    } else {
      this.inbox.reportError(err, what);
    }
  }

  /** Reads message `id` again and shows it; `fallback` is re-shown (with the refusal) when nothing newer comes. */
  private async reread(id: string, fallback?: Message): Promise<void> {
    try {
      const res = await this.inbox.client.getMessage({ messageId: id });
      if (res.message) this.show(res.message);
      if (fallback) this.show({ ...fallback });
    } catch (err) {
      this.inbox.reportError(err, "Loading message");
      if (fallback) this.show({ ...fallback });
    }
  }
}
