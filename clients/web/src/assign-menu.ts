// The thread's Assign menu (AssignConversation). Admins assign to anyone (a user id typed in) or unassign; an agent
// takes an unassigned conversation, hands their own to a colleague, or releases it. A <details> disclosure: no
// script needed to open it, nothing inline for the CSP.
import { h, icon, userText } from "./dom.js";
import type { Conversation } from "./gen/sms/v1/types_pb.js";
import type { Inbox } from "./inbox.js";
import { go } from "./route.js";
import { ICONS } from "./views.js";

const MAX_USER_ID_CHARS = 128;

export class AssignMenu {
  readonly el: HTMLDetailsElement;
  /** The assignee chip shown in the header beside the menu. */
  readonly chip: HTMLElement;
  private readonly pop: HTMLElement;
  private conversation: Conversation | undefined;
  private busy = false;
  private typed = "";
  /** The assignee the menu was last built for: rebuilt only when it changes, so typing is not interrupted. */
  private builtFor: string | null = null;

  constructor(
    private readonly inbox: Inbox,
    private readonly id: string,
  ) {
    this.chip = h("span", { class: "assignee", "data-testid": "thread-assignee" });
    this.pop = h("div", { class: "menu-pop", "data-testid": "assign-pop" });
    this.el = h(
      "details",
      { class: "menu assign-menu", "data-testid": "assign-menu" },
      h("summary", { class: "btn btn-ghost btn-small", "data-testid": "assign-button" }, icon(ICONS.user), "Assign"),
      this.pop,
    );
    this.el.addEventListener("toggle", () => {
      if (this.el.open) this.pop.querySelector("input")?.focus();
    });
  }

  update(c: Conversation | undefined): void {
    this.conversation = c;
    const owner = c?.owner ?? "";
    this.chip.dataset.assignee = owner;
    this.chip.replaceChildren(
      ...(c ? (owner ? ["Assigned to @", userText("span", null, owner)] : ["Unassigned"]) : []),
    );
    this.chip.classList.toggle("unassigned", !!c && !owner);
    this.el.hidden = !c || !this.actionsFor(c).length;
    if (!this.busy && this.builtFor !== (c ? owner : null)) this.render();
  }

  /** What the signed-in user may do with `c`. */
  private actionsFor(c: Conversation): ("take" | "assign" | "unassign" | "release")[] {
    const me = this.inbox.claims.sub;
    if (this.inbox.isAdmin) {
      return [...(c.owner !== me ? (["take"] as const) : []), "assign", ...(c.owner ? (["unassign"] as const) : [])];
    }
    if (!c.owner) return ["take"];
    if (c.owner === me) return ["assign", "release"];
    return [];
  }

  private render(): void {
    const c = this.conversation;
    this.builtFor = c ? c.owner : null;
    if (!c) return void this.pop.replaceChildren();
    const actions = this.actionsFor(c);
    const mine = c.owner === this.inbox.claims.sub;
    const input = h("input", {
      class: "input",
      type: "text",
      "data-testid": "assign-input",
      "aria-label": "User id",
      placeholder: "user id, e.g. bob",
      maxlength: MAX_USER_ID_CHARS,
      spellcheck: "false",
      autocomplete: "off",
      value: this.typed,
    });
    input.addEventListener("input", () => (this.typed = input.value));
    const assignTo = () => {
      const who = input.value.trim();
      if (who) void this.assign(who);
    };
    this.pop.replaceChildren(
      actions.includes("take")
        ? this.button("assign-take", this.inbox.isAdmin ? "Assign to me" : "Take", () => this.assign(this.inbox.claims.sub))
        : "",
      actions.includes("assign")
        ? h(
            "form",
            { class: "inline-form", onsubmit: (e: SubmitEvent) => (e.preventDefault(), assignTo()) },
            input,
            h(
              "button",
              { class: "btn btn-primary btn-small", type: "submit", "data-testid": "assign-submit" },
              this.inbox.isAdmin ? "Assign" : "Hand over",
            ),
          )
        : "",
      actions.includes("unassign") ? this.button("assign-unassign", "Unassign", () => this.assign("")) : "",
      actions.includes("release") && mine ? this.button("assign-release", "Release", () => this.assign("")) : "",
    );
  }

  private button(testid: string, text: string, onclick: () => Promise<void>): HTMLElement {
    return h(
      "button",
      { class: "btn btn-ghost btn-small menu-item", type: "button", "data-testid": testid, onclick: () => void onclick() },
      text,
    );
  }

  private async assign(assignee: string): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    this.el.dataset.busy = "true";
    try {
      const res = await this.inbox.client.assignConversation({ conversationId: this.id, assignee });
      this.typed = "";
      this.el.open = false;
      if (res.conversation) this.inbox.upsertConversation(res.conversation);
      // An agent who handed it to a colleague no longer sees it: back to the list.
      const me = this.inbox.claims.sub;
      if (!this.inbox.isAdmin && assignee && assignee !== me) go("#/");
    } catch (err) {
      this.inbox.reportError(err, assignee ? "Not assigned" : "Not unassigned");
      void this.inbox.fetchConversation(this.id);
    } finally {
      this.busy = false;
      this.el.dataset.busy = "false";
      this.render();
    }
  }
}
