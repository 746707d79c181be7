// The one error toast: the latest failure, hidden after a while or on click.
import { h } from "./dom.js";

const SHOWN_MS = 8000;

export class ErrorToast {
  readonly el: HTMLElement;
  private timer = 0;

  constructor() {
    this.el = h("div", {
      class: "toast",
      "data-testid": "error-toast",
      role: "alert",
      hidden: true,
      onclick: () => this.hide(),
    });
  }

  show(line: Node): void {
    this.el.replaceChildren(line);
    this.el.hidden = false;
    window.clearTimeout(this.timer);
    this.timer = window.setTimeout(() => this.hide(), SHOWN_MS);
  }

  hide(): void {
    this.el.hidden = true;
  }

  destroy(): void {
    window.clearTimeout(this.timer);
  }
}
