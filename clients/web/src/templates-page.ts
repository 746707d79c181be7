// The templates page (`#/templates`): the canned replies the signed-in user may use, paged by next_page_token, and a
// form to create or edit one. Agents create personal templates and edit or delete their own; shared ones they see
// read-only. Admins may also create shared ones (the Shared box) and edit or delete any. The server's refusals
// (a taken name: ALREADY_EXISTS; an unknown placeholder: INVALID_ARGUMENT) show next to the form.
import { create } from "@bufbuild/protobuf";
import { FieldMaskSchema } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { errorCode } from "./api.js";
import { h, userText } from "./dom.js";
import { fullTime, shortWhen } from "./format.js";
import { TemplateSchema, type Template } from "./gen/sms/v1/types_pb.js";
import type { Inbox } from "./inbox.js";
import { Pager } from "./pager.js";
import { PLACEHOLDER_NAMES } from "./placeholders.js";
import { backButton, errorLine, labelled } from "./views.js";
import "./templates.css";

const PAGE_SIZE = 50;
const MAX_NAME_BYTES = 64;
const MAX_BODY_CHARS = 1600;

interface Form {
  el: HTMLFormElement;
  title: HTMLElement;
  name: HTMLInputElement;
  body: HTMLTextAreaElement;
  shared: HTMLInputElement | null;
  sharedRow: HTMLElement | null;
  save: HTMLButtonElement;
  cancel: HTMLButtonElement;
  error: HTMLElement;
}

export class TemplatesPage {
  private pager: Pager<Template>;
  private items: Template[] = [];
  /** The template being edited, or null when the form creates a new one. */
  private editing: Template | null = null;
  /** The template whose Delete asks for confirmation. */
  private confirming = "";
  private saving = false;
  private form: Form | null = null;
  private list: HTMLElement | null = null;
  private listStatus: HTMLElement | null = null;
  private more: HTMLButtonElement | null = null;

  /** `pane` is where the page shows (the main pane, shared with the other views). */
  constructor(
    private readonly inbox: Inbox,
    private readonly pane: HTMLElement,
  ) {
    this.pager = this.newPager();
  }

  private newPager(): Pager<Template> {
    return new Pager(async (pageToken) => {
      const res = await this.inbox.client.listTemplates({ pageSize: PAGE_SIZE, pageToken });
      return { items: res.templates, nextPageToken: res.nextPageToken };
    });
  }

  /** Shows the page with a fresh form and the first page of templates. */
  open(): void {
    this.editing = null;
    this.confirming = "";
    this.form = this.buildForm();
    this.list = h("ul", { class: "tpl-list", "data-testid": "template-list" });
    this.listStatus = h("div", { class: "list-status", "data-testid": "template-list-status", role: "status" });
    this.more = h(
      "button",
      { class: "btn btn-ghost", type: "button", "data-testid": "templates-more", hidden: true, onclick: () => void this.loadMore() },
      "Load more",
    );
    this.pane.replaceChildren(
      h(
        "section",
        { class: "templates-page", "data-testid": "templates-page" },
        h("div", { class: "main-head" }, backButton(), h("h2", null, "Templates")),
        h(
          "div",
          { class: "tpl-page-body" },
          this.form.el,
          h(
            "section",
            { class: "tpl-list-section", "aria-label": "Your templates" },
            h("h3", { class: "section-title" }, "Templates you can use"),
            this.list,
            this.listStatus,
            h("div", { class: "tpl-more" }, this.more),
          ),
        ),
      ),
    );
    this.reload();
  }

  // ---- the list -------------------------------------------------------------------------------------

  private reload(): void {
    this.pager.reset();
    this.items = [];
    this.renderList();
    void this.loadMore();
  }

  private async loadMore(): Promise<void> {
    const pending = this.pager.load();
    if (!pending) return;
    if (this.listStatus) {
      this.listStatus.classList.remove("error");
      this.listStatus.textContent = "Loading…";
    }
    const outcome = await pending;
    if (!outcome) return;
    if ("error" in outcome) {
      this.fail(outcome.error, this.listStatus, "Templates not loaded");
      this.listStatus?.classList.add("error");
      if (this.more) this.more.hidden = false;
      return;
    }
    const known = new Set(this.items.map((t) => t.id));
    this.items.push(...outcome.items.filter((t) => !known.has(t.id)));
    this.renderList();
  }

  private mayEdit(t: Template): boolean {
    return this.inbox.isAdmin || (!t.shared && t.owner === this.inbox.claims.sub);
  }

  private renderList(): void {
    const { list, listStatus, more } = this;
    if (!list || !listStatus || !more) return;
    list.replaceChildren(...this.items.map((t) => this.item(t)));
    listStatus.classList.remove("error");
    listStatus.textContent = this.pager.started && !this.items.length ? "No templates yet: create one above." : "";
    more.hidden = !this.pager.more;
  }

  private item(t: Template): HTMLElement {
    const editable = this.mayEdit(t);
    const actions: HTMLElement[] = [];
    if (editable && this.confirming === t.id) {
      actions.push(
        h("span", { class: "tpl-confirm-text" }, "Delete it?"),
        h(
          "button",
          { class: "btn btn-small tpl-danger", type: "button", "data-testid": "template-delete-confirm", onclick: () => void this.remove(t) },
          "Delete",
        ),
        h(
          "button",
          { class: "btn btn-ghost btn-small", type: "button", "data-testid": "template-delete-cancel", onclick: () => this.confirm("") },
          "Keep",
        ),
      );
    } else if (editable) {
      actions.push(
        h(
          "button",
          { class: "btn btn-ghost btn-small", type: "button", "data-testid": "template-edit", onclick: () => this.edit(t) },
          "Edit",
        ),
        h(
          "button",
          { class: "btn btn-ghost btn-small", type: "button", "data-testid": "template-delete", onclick: () => this.confirm(t.id) },
          "Delete",
        ),
      );
    } else {
      actions.push(h("span", { class: "tpl-readonly", "data-testid": "template-readonly" }, "Read-only"));
    }
    return h(
      "li",
      {
        class: `tpl-item${this.editing?.id === t.id ? " editing" : ""}`,
        "data-testid": "template-item",
        "data-template-id": t.id,
        "data-name": t.displayName,
        "data-shared": t.shared ? "true" : "false",
        "data-owner": t.owner,
        "data-editable": editable ? "true" : "false",
      },
      h(
        "div",
        { class: "tpl-item-head" },
        userText("span", { class: "tpl-item-name", "data-testid": "template-name-text" }, t.displayName),
        t.shared ? h("span", { class: "chip tpl-shared", "data-testid": "template-shared-chip" }, "Shared") : null,
        t.owner && t.owner !== this.inbox.claims.sub ? labelled("by ", t.owner, { class: "chip tpl-owner" }) : null,
        h("time", { class: "tpl-time", title: fullTime(t.updateTime) }, shortWhen(t.updateTime)),
      ),
      userText("div", { class: "tpl-item-body", "data-testid": "template-body-text" }, t.body),
      h("div", { class: "tpl-item-actions" }, actions),
    );
  }

  private confirm(id: string): void {
    this.confirming = id;
    this.renderList();
  }

  private async remove(t: Template): Promise<void> {
    try {
      await this.inbox.client.deleteTemplate({ templateId: t.id });
      this.items = this.items.filter((x) => x.id !== t.id);
      if (this.editing?.id === t.id) this.edit(null);
      this.confirming = "";
      this.renderList();
    } catch (err) {
      this.confirming = "";
      this.renderList();
      if (errorCode(err) === Code.NotFound) {
        this.items = this.items.filter((x) => x.id !== t.id);
        this.renderList();
      }
      this.fail(err, this.listStatus, "Template not deleted");
      this.listStatus?.classList.add("error");
    }
  }

  // ---- the form -------------------------------------------------------------------------------------

  private buildForm(): Form {
    const name = h("input", {
      type: "text",
      class: "input",
      id: "template-name",
      "data-testid": "template-name",
      maxlength: MAX_NAME_BYTES,
      autocomplete: "off",
      placeholder: "e.g. Greeting",
      required: true,
    });
    const body = h("textarea", {
      class: "input",
      id: "template-body",
      "data-testid": "template-body",
      rows: 4,
      maxlength: MAX_BODY_CHARS,
      placeholder: "Hi {{contact_name}}, this is {{agent}}…",
      required: true,
    });
    const insertPlaceholder = (p: string) => {
      const token = `{{${p}}}`;
      const start = body.selectionStart ?? body.value.length;
      const end = body.selectionEnd ?? start;
      body.setRangeText(token, start, end, "end");
      body.focus();
    };
    const shared = this.inbox.isAdmin
      ? h("input", { type: "checkbox", id: "template-shared", "data-testid": "template-shared" })
      : null;
    const sharedRow = shared
      ? h(
          "label",
          { class: "tpl-shared-row", for: "template-shared" },
          shared,
          h("span", null, "Shared with everyone"),
        )
      : null;
    const title = h("h3", { class: "tpl-form-title", "data-testid": "template-form-title" }, "New template");
    const save = h("button", { class: "btn btn-primary", type: "submit", "data-testid": "template-save" }, "Create");
    const cancel = h(
      "button",
      { class: "btn btn-ghost", type: "button", "data-testid": "template-cancel", hidden: true, onclick: () => this.edit(null) },
      "Cancel",
    );
    const error = h("div", { class: "form-error", "data-testid": "template-error", role: "alert" });
    const el = h(
      "form",
      {
        class: "tpl-form",
        "data-testid": "template-form",
        "data-mode": "create",
        onsubmit: (e: SubmitEvent) => (e.preventDefault(), void this.submit()),
      },
      title,
      h("label", { for: "template-name" }, "Name"),
      name,
      h("label", { for: "template-body" }, "Text"),
      body,
      h(
        "div",
        { class: "tpl-placeholders" },
        h("span", { class: "hint" }, "Insert:"),
        PLACEHOLDER_NAMES.map((p) =>
          h(
            "button",
            {
              class: "chip tpl-placeholder",
              type: "button",
              "data-testid": "template-insert-placeholder",
              "data-placeholder": p,
              title: `Insert {{${p}}}`,
              onclick: () => insertPlaceholder(p),
            },
            `{{${p}}}`,
          ),
        ),
      ),
      sharedRow,
      error,
      h("div", { class: "form-actions" }, cancel, save),
    );
    return { el, title, name, body, shared, sharedRow, save, cancel, error };
  }

  /** Fills the form with `t` to edit it, or empties it for a new template (null). */
  private edit(t: Template | null): void {
    const f = this.form;
    if (!f) return;
    this.editing = t;
    this.confirming = "";
    f.name.value = t?.displayName ?? "";
    f.body.value = t?.body ?? "";
    f.error.textContent = "";
    f.title.textContent = t ? "Edit template" : "New template";
    f.save.textContent = t ? "Save" : "Create";
    f.cancel.hidden = !t;
    f.el.dataset.mode = t ? "edit" : "create";
    // Whether a template is shared is chosen when it is made (UpdateTemplate changes its name and text only).
    if (f.sharedRow && f.shared) {
      f.sharedRow.hidden = !!t;
      f.shared.checked = false;
    }
    this.renderList();
    if (t) {
      f.el.scrollIntoView({ block: "nearest" });
      f.name.focus();
    }
  }

  private async submit(): Promise<void> {
    const f = this.form;
    if (!f || this.saving) return;
    const displayName = f.name.value.trim();
    const body = f.body.value.trim();
    f.error.textContent = "";
    if (!displayName) return void ((f.error.textContent = "Give the template a name."), f.name.focus());
    if (new TextEncoder().encode(displayName).length > MAX_NAME_BYTES) {
      return void ((f.error.textContent = `The name is too long (at most ${MAX_NAME_BYTES} bytes).`), f.name.focus());
    }
    if (!body) return void ((f.error.textContent = "Write the template's text."), f.body.focus());
    const editing = this.editing;
    this.saving = true;
    f.save.disabled = true;
    try {
      if (editing) {
        const res = await this.inbox.client.updateTemplate({
          template: create(TemplateSchema, { id: editing.id, displayName, body }),
          updateMask: create(FieldMaskSchema, { paths: ["display_name", "body"] }),
        });
        const updated = res.template;
        if (updated) this.items = this.items.map((x) => (x.id === updated.id ? updated : x));
        this.edit(null);
      } else {
        await this.inbox.client.createTemplate({
          template: create(TemplateSchema, { displayName, body, shared: !!f.shared?.checked }),
        });
        this.edit(null);
        this.reload();
      }
    } catch (err) {
      this.fail(err, f.error, editing ? "Not saved" : "Not created");
    } finally {
      this.saving = false;
      f.save.disabled = false;
    }
  }

  /** Shows a failed call next to what it concerns; a rejected token signs out instead. */
  private fail(err: unknown, where: HTMLElement | null, what: string): void {
    const code = errorCode(err);
    if (code === Code.Unauthenticated) {
      this.inbox.reportError(err, what);
      return;
    }
    if (!where || code === Code.Canceled) return;
    const hint =
      code === Code.AlreadyExists
        ? "A template with this name exists already."
        : code === Code.InvalidArgument
          ? `Placeholders allowed: ${PLACEHOLDER_NAMES.map((p) => `{{${p}}}`).join(", ")}.`
          : "";
    where.replaceChildren(errorLine(err, what));
    if (hint) where.append(h("span", { class: "tpl-error-hint" }, " ", hint));
  }
}
