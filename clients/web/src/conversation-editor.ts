// The thread header's editable parts: the contact's name, edited in place, and the labels as chips, each saved with
// UpdateConversation and an update mask naming only that field. Their assignee and admins may edit; the editors
// keep what is being typed while live updates re-render the header around them.
import { create } from "@bufbuild/protobuf";
import { FieldMaskSchema } from "@bufbuild/protobuf/wkt";
import { h, icon } from "./dom.js";
import { ConversationSchema, type Conversation } from "./gen/sms/v1/types_pb.js";
import type { Inbox } from "./inbox.js";
import { ICONS, contactLabel, labelChips } from "./views.js";

const MAX_NAME_CHARS = 200;
const MAX_LABEL_CHARS = 64;
const MAX_LABELS = 20;

/** Whether the signed-in user may change the conversation's name and labels: its assignee, or an admin. */
export function mayEdit(inbox: Inbox, c: Conversation): boolean {
  return inbox.isAdmin || (!!c.owner && c.owner === inbox.claims.sub);
}

async function update(
  inbox: Inbox,
  id: string,
  fields: { contactName?: string; labels?: string[] },
  path: string,
): Promise<boolean> {
  try {
    const res = await inbox.client.updateConversation({
      conversation: create(ConversationSchema, { id, ...fields }),
      updateMask: create(FieldMaskSchema, { paths: [path] }),
    });
    if (res.conversation) inbox.upsertConversation(res.conversation);
    return true;
  } catch (err) {
    inbox.reportError(err, path === "labels" ? "Labels not saved" : "Name not saved");
    return false;
  }
}

/** The contact's name (or number) as the thread's title, with a pencil that turns it into a text box. */
export class NameEditor {
  readonly el: HTMLElement;
  private conversation: Conversation | undefined;
  private editing: HTMLInputElement | null = null;
  private saving = false;

  constructor(
    private readonly inbox: Inbox,
    private readonly id: string,
  ) {
    this.el = h("div", { class: "name-editor" });
  }

  update(c: Conversation | undefined): void {
    this.conversation = c;
    if (!this.editing) this.render();
  }

  private render(): void {
    const c = this.conversation;
    const attrs = { class: "thread-contact", "data-testid": "thread-contact" };
    this.el.replaceChildren(
      c ? contactLabel(c, attrs) : h("span", attrs, "Loading…"),
      c && mayEdit(this.inbox, c)
        ? h(
            "button",
            {
              class: "btn btn-icon btn-small",
              type: "button",
              "data-testid": "edit-name",
              title: c.contactName ? "Rename the contact" : "Name the contact",
              "aria-label": "Edit the contact's name",
              onclick: () => this.edit(),
            },
            icon(ICONS.edit),
          )
        : "",
    );
  }

  private edit(): void {
    const c = this.conversation;
    if (!c) return;
    const input = h("input", {
      class: "input name-input",
      type: "text",
      "data-testid": "contact-name-input",
      "aria-label": "Contact name",
      placeholder: "Contact name",
      maxlength: MAX_NAME_CHARS,
      dir: "auto",
      value: c.contactName,
    });
    this.editing = input;
    const cancel = () => {
      this.editing = null;
      this.render();
    };
    const save = async () => {
      if (this.saving) return;
      const name = input.value.trim();
      if (name === (this.conversation?.contactName ?? "")) return cancel();
      this.saving = true;
      input.disabled = true;
      const ok = await update(this.inbox, this.id, { contactName: name }, "contact_name");
      this.saving = false;
      input.disabled = false;
      if (ok) cancel();
      else input.focus();
    };
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        void save();
      } else if (e.key === "Escape") cancel();
    });
    this.el.replaceChildren(
      h(
        "form",
        { class: "inline-form", onsubmit: (e: SubmitEvent) => (e.preventDefault(), void save()) },
        input,
        h("button", { class: "btn btn-primary btn-small", type: "submit", "data-testid": "contact-name-save" }, "Save"),
        h("button", { class: "btn btn-ghost btn-small", type: "button", onclick: cancel }, "Cancel"),
      ),
    );
    input.focus();
    input.select();
  }
}

/** The conversation's labels as chips, each removable, and a box to add one (Enter). */
export class LabelEditor {
  readonly el: HTMLElement;
  private conversation: Conversation | undefined;
  private adding: HTMLInputElement | null = null;

  constructor(
    private readonly inbox: Inbox,
    private readonly id: string,
  ) {
    this.el = h("div", { class: "labels", "data-testid": "thread-labels" });
  }

  update(c: Conversation | undefined): void {
    this.conversation = c;
    if (!this.adding) this.render();
  }

  private render(): void {
    const c = this.conversation;
    if (!c) return void this.el.replaceChildren();
    const editable = mayEdit(this.inbox, c);
    this.el.replaceChildren(
      ...labelChips(c.labels, "thread-label").map((chip, i) => {
        const label = c.labels[i];
        if (editable) {
          chip.append(
            h(
              "button",
              {
                class: "chip-x",
                type: "button",
                "data-testid": "label-remove",
                "aria-label": `Remove label ${label}`,
                onclick: () => void this.save(c.labels.filter((l) => l !== label)),
              },
              icon(ICONS.x),
            ),
          );
        }
        return chip;
      }),
      editable && c.labels.length < MAX_LABELS
        ? h(
            "button",
            { class: "chip chip-add", type: "button", "data-testid": "label-add", onclick: () => this.add() },
            "+ Label",
          )
        : "",
    );
  }

  private add(): void {
    const input = h("input", {
      class: "input label-input",
      type: "text",
      "data-testid": "label-input",
      "aria-label": "New label",
      placeholder: "label",
      maxlength: MAX_LABEL_CHARS,
      spellcheck: "false",
    });
    this.adding = input;
    const done = () => {
      this.adding = null;
      this.render();
    };
    input.addEventListener("keydown", (e) => {
      if (e.key === "Escape") return done();
      if (e.key !== "Enter") return;
      e.preventDefault();
      const label = input.value.trim();
      const labels = this.conversation?.labels ?? [];
      done();
      if (label && !labels.includes(label)) void this.save([...labels, label]);
    });
    input.addEventListener("blur", () => {
      if (this.adding === input && !input.value.trim()) done();
    });
    this.el.append(input);
    input.focus();
  }

  private async save(labels: string[]): Promise<void> {
    await update(this.inbox, this.id, { labels }, "labels");
  }
}
