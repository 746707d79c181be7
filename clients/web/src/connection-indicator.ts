// The live-stream indicator in the header: `connected` once the stream answered, else `reconnecting` (also while
// first connecting), which tests read from data-state.
import { apiBaseUrl } from "./api.js";
import { h } from "./dom.js";
import type { LiveState } from "./live.js";

export class ConnectionIndicator {
  readonly el: HTMLElement;
  private readonly label: HTMLElement;

  constructor() {
    this.label = h("span", { class: "conn-label" }, "Connecting…");
    this.el = h(
      "span",
      { class: "conn", "data-testid": "connection-indicator", "data-state": "reconnecting", role: "status" },
      h("span", { class: "conn-dot" }),
      this.label,
    );
  }

  show(state: LiveState, detail: string): void {
    const connected = state === "connected";
    this.el.dataset.state = connected ? "connected" : "reconnecting";
    this.el.title = connected ? `Live updates on (${apiBaseUrl()})` : detail || "Connecting…";
    this.label.textContent = connected ? "Connected" : state === "connecting" ? "Connecting…" : "Reconnecting…";
  }
}
