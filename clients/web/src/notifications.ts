// Optional desktop notifications (Notification API) for inbound messages while the tab is hidden. The browser is
// asked once, from the header's bell (a user gesture), never on its own; after that the bell switches them on and
// off (kept in localStorage).
import { h, icon } from "./dom.js";
import { contactDisplay } from "./format.js";
import { Direction, type Conversation, type Message } from "./gen/sms/v1/types_pb.js";
import { conversationHash, go } from "./route.js";
import { ICONS } from "./views.js";

const PREF_KEY = "sms-gateway.notify";
const MAX_REMEMBERED = 500;

function supported(): boolean {
  return typeof window.Notification === "function";
}

function readPref(): boolean {
  try {
    return localStorage.getItem(PREF_KEY) === "on";
  } catch {
    return false;
  }
}

function writePref(on: boolean): void {
  try {
    localStorage.setItem(PREF_KEY, on ? "on" : "off");
  } catch {
    // No storage: the choice lasts until reload.
  }
}

export class DesktopNotifier {
  readonly el: HTMLButtonElement;
  private enabled = readPref();
  private readonly notified = new Set<string>();

  constructor() {
    this.el = h(
      "button",
      { class: "btn btn-ghost btn-icon notify", type: "button", "data-testid": "notify-toggle", onclick: () => void this.toggle() },
      icon(ICONS.bell),
    );
    this.el.hidden = !supported();
    this.render();
  }

  /** An inbound message arrived live: a notification when they are on and the tab is hidden (once per message). */
  notify(m: Message, c: Conversation | undefined): void {
    if (m.direction !== Direction.INBOUND || this.notified.has(m.id)) return;
    this.notified.add(m.id);
    if (this.notified.size > MAX_REMEMBERED) this.notified.delete(this.notified.values().next().value as string);
    if (!this.active() || document.visibilityState !== "hidden") return;
    const n = new Notification(c ? contactDisplay(c) : "New message", { body: m.body, tag: m.conversationId });
    n.onclick = () => {
      window.focus();
      go(conversationHash(m.conversationId));
      n.close();
    };
  }

  private active(): boolean {
    return supported() && this.enabled && Notification.permission === "granted";
  }

  private async toggle(): Promise<void> {
    if (!supported()) return;
    if (Notification.permission === "default") {
      // The one question, on the user's click.
      const answer = await Notification.requestPermission();
      this.enabled = answer === "granted";
    } else {
      this.enabled = !this.enabled;
    }
    writePref(this.enabled);
    this.render();
  }

  private render(): void {
    const permission = supported() ? Notification.permission : "denied";
    const on = this.active();
    this.el.setAttribute("aria-pressed", String(on));
    this.el.dataset.state = permission === "denied" ? "blocked" : on ? "on" : "off";
    this.el.disabled = permission === "denied";
    const title =
      permission === "denied"
        ? "Desktop notifications are blocked in this browser's settings"
        : on
          ? "Desktop notifications on (for new messages while this tab is hidden): click to turn off"
          : "Notify me of new messages while this tab is hidden";
    this.el.title = title;
    this.el.setAttribute("aria-label", title);
  }
}
