// "Send later" beside the composer's Send: a toggle opening a date-time picker (the viewer's local time, from now to
// MAX_SCHEDULE_DAYS ahead). While it is open the composer schedules (SendRequest.send_at) instead of sending.
import { h, icon } from "./dom.js";
import { whenAtDate } from "./format.js";
import { ICONS } from "./views.js";

/** The server's SMS_SCHEDULE_MAX_DAYS as deployed; a later time is refused (INVALID_ARGUMENT) anyway. */
export const MAX_SCHEDULE_DAYS = 35;
const DAY_MS = 86_400_000;

const pad = (n: number): string => String(n).padStart(2, "0");

/** A Date as a datetime-local value in the viewer's zone, to the minute: 2026-12-04T18:21. */
export function localInputValue(d: Date): string {
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** A datetime-local value (local time) as a Date; null when empty or malformed. */
export function parseLocalInput(value: string): Date | null {
  const m = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2}))?/.exec(value);
  if (!m) return null;
  const d = new Date(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], m[6] ? +m[6] : 0);
  return Number.isNaN(d.getTime()) ? null : d;
}

/** Why `at` cannot be a send time, or "" when it can. */
export function sendTimeProblem(at: Date | null, now = new Date()): string {
  if (!at) return "Choose a date and time.";
  if (at.getTime() <= now.getTime()) return "That time has passed: choose a later one.";
  if (at.getTime() > now.getTime() + MAX_SCHEDULE_DAYS * DAY_MS) return `At most ${MAX_SCHEDULE_DAYS} days ahead.`;
  return "";
}

export type LaterChoice = { at: Date } | { problem: string };

let panels = 0;

/** The toggle and its panel, for one attached form. State lives with the composer, per conversation. */
export class SendLater {
  readonly toggle: HTMLButtonElement;
  readonly panel: HTMLElement;
  readonly input: HTMLInputElement;
  private readonly hint: HTMLElement;
  private readonly close: HTMLButtonElement;

  constructor(
    value: string,
    private readonly onChange: (open: boolean, value: string) => void,
  ) {
    const id = `send-later-${++panels}`;
    this.input = h("input", {
      type: "datetime-local",
      class: "input send-later-input",
      "data-testid": "send-later-input",
      "aria-describedby": `${id}-hint`,
      // Not `required`, and the form is `novalidate`: the composer checks the time itself (a hidden, empty required
      // field would block every Send).
      "aria-required": "true",
    });
    this.input.value = value;
    this.hint = h("span", { class: "send-later-hint", id: `${id}-hint`, "data-testid": "send-later-hint", "aria-live": "polite" });
    this.close = h(
      "button",
      {
        class: "btn btn-icon btn-small",
        type: "button",
        "data-testid": "send-later-close",
        "aria-label": "Send now instead",
        title: "Send now instead",
      },
      icon(ICONS.x),
    );
    this.panel = h(
      "div",
      { class: "send-later", id, role: "group", "aria-label": "Send later", "data-testid": "send-later", hidden: true },
      h("label", { class: "send-later-label" }, h("span", null, "Send at"), this.input),
      this.hint,
      this.close,
    );
    this.toggle = h(
      "button",
      {
        class: "btn btn-ghost send-later-toggle",
        type: "button",
        "data-testid": "send-later-toggle",
        "aria-expanded": "false",
        "aria-controls": id,
        title: "Send later…",
        "aria-label": "Send later",
      },
      icon(ICONS.clock),
      h("span", { class: "send-later-toggle-label" }, "Later"),
    );
    this.toggle.addEventListener("click", () => this.setOpen(!this.open, true));
    this.close.addEventListener("click", () => this.setOpen(false, true));
    for (const ev of ["input", "change"]) this.input.addEventListener(ev, () => this.changed());
    this.input.addEventListener("focus", () => this.refreshBounds());
  }

  get open(): boolean {
    return !this.panel.hidden;
  }

  /** Opens or closes the picker; `focus` moves the focus into it (or back to the toggle). */
  setOpen(open: boolean, focus = false): void {
    this.panel.hidden = !open;
    this.toggle.setAttribute("aria-expanded", String(open));
    this.toggle.classList.toggle("active", open);
    if (open) this.refreshBounds();
    this.renderHint();
    if (focus) (open ? this.input : this.toggle).focus();
    this.onChange(open, this.input.value);
  }

  /** Hides the toggle and the panel (note mode), or shows the toggle again. */
  setAvailable(available: boolean, enabled: boolean): void {
    this.toggle.hidden = !available;
    this.toggle.disabled = !enabled;
    this.panel.classList.toggle("unavailable", !available);
  }

  /** Forgets the time chosen (after a scheduled send) and closes. */
  reset(): void {
    this.input.value = "";
    this.setOpen(false);
  }

  /** Null while closed; else the time chosen, or why it cannot be used. */
  choice(): LaterChoice | null {
    if (!this.open) return null;
    const at = parseLocalInput(this.input.value);
    const problem = sendTimeProblem(at);
    return problem || !at ? { problem } : { at };
  }

  private refreshBounds(): void {
    const now = new Date();
    this.input.min = localInputValue(now);
    this.input.max = localInputValue(new Date(now.getTime() + MAX_SCHEDULE_DAYS * DAY_MS));
  }

  private changed(): void {
    this.renderHint();
    this.onChange(this.open, this.input.value);
  }

  /** Re-checks the time chosen against the clock, showing why it no longer works. */
  refresh(): void {
    this.renderHint();
  }

  private renderHint(): void {
    const choice = this.choice();
    const bad = !!choice && "problem" in choice && this.input.value !== "";
    this.hint.classList.toggle("error", bad);
    this.input.setAttribute("aria-invalid", String(bad));
    if (!choice) this.hint.textContent = "";
    else if ("at" in choice) this.hint.textContent = `Sends ${whenAtDate(choice.at)} (your time).`;
    else this.hint.textContent = this.input.value ? choice.problem : `Your time; up to ${MAX_SCHEDULE_DAYS} days ahead.`;
  }
}
