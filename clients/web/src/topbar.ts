// The header: brand, the tabs (Inbox, the admin's Queue, Templates), the connection indicator, the notifications bell, who is signed in, and
// Sign out.
import type { Claims } from "./api.js";
import { h, userText } from "./dom.js";
import { brand } from "./views.js";

export class Topbar {
  readonly el: HTMLElement;
  private readonly tabs: HTMLElement[];

  constructor(claims: Claims, isAdmin: boolean, indicator: HTMLElement, bell: HTMLElement, onSignOut: () => void) {
    this.tabs = [
      h("a", { href: "#/", class: "tab", "data-testid": "tab-inbox" }, "Inbox"),
      isAdmin ? h("a", { href: "#/queue", class: "tab", "data-testid": "tab-queue" }, "Queue") : null,
      h("a", { href: "#/templates", class: "tab", "data-testid": "tab-templates" }, "Templates"),
    ].filter((tab) => tab !== null);
    this.el = h(
      "header",
      { class: "topbar" },
      brand(),
      this.tabs.length ? h("nav", { class: "tabs" }, this.tabs) : null,
      h("div", { class: "spacer" }),
      indicator,
      bell,
      h(
        "div",
        { class: "who", title: `Signed in as ${claims.sub} (${claims.role})` },
        userText("span", { class: "who-id", "data-testid": "user-id" }, claims.sub),
        h("span", { class: `role role-${claims.role}`, "data-testid": "user-role" }, claims.role),
      ),
      h(
        "button",
        { class: "btn btn-ghost", type: "button", "data-testid": "sign-out", onclick: onSignOut },
        "Sign out",
      ),
    );
  }

  /** Highlights the Queue tab on the dashboard, the Templates tab on the templates page, Inbox everywhere else. */
  highlight(page: "inbox" | "queue" | "templates"): void {
    for (const tab of this.tabs) {
      const active = tab.dataset.testid === `tab-${page}`;
      tab.classList.toggle("active", active);
      if (active) tab.setAttribute("aria-current", "page");
      else tab.removeAttribute("aria-current");
    }
  }
}
