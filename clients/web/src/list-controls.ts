// The sidebar's controls: the search box, the views (Mine, Unassigned, All for admins) with their counts, and the
// filters (unread, opted out, a label). Each change hands the whole choice to `onChange`.
import { h, icon } from "./dom.js";
import { VIEW_NAMES, type ListQuery, type ListView } from "./list-query.js";
import type { Counts } from "./summary.js";
import { ICONS } from "./views.js";

const SEARCH_DELAY_MS = 250;

export class ListControls {
  readonly el: HTMLElement;
  private readonly tabs = new Map<ListView, { button: HTMLButtonElement; count: HTMLElement }>();
  private readonly unread: HTMLButtonElement;
  private readonly optedOut: HTMLButtonElement;
  private readonly label: HTMLInputElement;
  private readonly search: HTMLInputElement;
  private searchTimer = 0;

  constructor(
    private query: ListQuery,
    isAdmin: boolean,
    private readonly onChange: (q: ListQuery) => void,
  ) {
    const views: ListView[] = isAdmin ? ["mine", "unassigned", "all"] : ["mine", "unassigned"];
    for (const view of views) {
      const count = h("span", { class: "view-count", "data-testid": "view-count", hidden: true });
      const button = h(
        "button",
        {
          class: "view-tab",
          type: "button",
          role: "tab",
          "data-testid": `view-${view}`,
          "data-count": "",
          onclick: () => this.set({ view }),
        },
        VIEW_NAMES[view],
        count,
      );
      this.tabs.set(view, { button, count });
    }
    this.unread = this.toggle("filter-unread", "Unread", () => this.set({ unread: !this.query.unread }));
    this.optedOut = this.toggle("filter-opted-out", "Opted out", () => this.set({ optedOut: !this.query.optedOut }));
    this.label = h("input", {
      class: "input filter-label",
      type: "text",
      placeholder: "Label",
      "aria-label": "Show only this label",
      "data-testid": "filter-label",
      maxlength: 64,
      spellcheck: "false",
    });
    const applyLabel = () => this.set({ label: this.label.value.trim() });
    this.label.addEventListener("change", applyLabel);
    this.label.addEventListener("keydown", (e) => {
      if (e.key === "Enter") applyLabel();
    });
    this.search = h("input", {
      class: "input search-input",
      type: "search",
      placeholder: "Search conversations and messages",
      "aria-label": "Search",
      "data-testid": "search-input",
      maxlength: 200,
      spellcheck: "false",
    });
    this.search.addEventListener("input", () => {
      window.clearTimeout(this.searchTimer);
      this.searchTimer = window.setTimeout(() => this.set({ text: this.search.value.trim() }), SEARCH_DELAY_MS);
    });
    this.search.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        window.clearTimeout(this.searchTimer);
        this.set({ text: this.search.value.trim() });
      } else if (e.key === "Escape") {
        this.search.value = "";
        this.set({ text: "" });
      }
    });
    this.el = h(
      "div",
      { class: "list-controls" },
      h("label", { class: "search" }, icon(ICONS.search), this.search),
      h("div", { class: "views", role: "tablist", "data-testid": "views" }, [...this.tabs.values()].map((t) => t.button)),
      h("div", { class: "filters", "data-testid": "filters" }, this.unread, this.optedOut, this.label),
    );
    this.render();
  }

  destroy(): void {
    window.clearTimeout(this.searchTimer);
  }

  /** The counts of GetInboxSummary on the tabs: Mine and Unassigned (All has none of its own). */
  showCounts(counts: Counts): void {
    const values: Partial<Record<ListView, number>> = { mine: counts.mine, unassigned: counts.unassigned };
    for (const [view, tab] of this.tabs) {
      const n = values[view];
      tab.button.dataset.count = n === undefined ? "" : String(n);
      tab.count.hidden = n === undefined;
      tab.count.textContent = n === undefined ? "" : n > 999 ? "999+" : String(n);
    }
  }

  private toggle(testid: string, text: string, onclick: () => void): HTMLButtonElement {
    return h("button", { class: "filter", type: "button", "data-testid": testid, "aria-pressed": "false", onclick }, text);
  }

  private set(change: Partial<ListQuery>): void {
    const next = { ...this.query, ...change };
    this.query = next;
    this.render();
    this.onChange(next);
  }

  private render(): void {
    for (const [view, tab] of this.tabs) {
      const on = view === this.query.view;
      tab.button.classList.toggle("active", on);
      tab.button.setAttribute("aria-selected", on ? "true" : "false");
    }
    this.unread.setAttribute("aria-pressed", String(this.query.unread));
    this.optedOut.setAttribute("aria-pressed", String(this.query.optedOut));
    this.label.classList.toggle("active", !!this.query.label);
  }
}
