// The composer's template picker: typing `/` at the start of the text box opens a listbox above it with the
// caller's templates (ListTemplates; what follows the slash is the type-ahead `query`). ArrowUp/ArrowDown move,
// Enter or Tab inserts, Escape closes, a click inserts. Inserting replaces the `/query` with the template's body,
// its placeholders filled (placeholders.ts), and fires `input` so the composer's draft and counter follow.
//
// The keys are caught before the composer's own Enter-to-send (a capture listener on the window), and only while the
// popup is open: when it is closed, Enter is left alone.
import { Code } from "@connectrpc/connect";
import { errorCode, type SmsClient } from "./api.js";
import { h, userText } from "./dom.js";
import type { Template } from "./gen/sms/v1/types_pb.js";
import { fillPlaceholders } from "./placeholders.js";
import "./templates.css";

export interface PlaceholderValues {
  contact_name: string;
  contact_number: string;
  contact_id: string;
  agent: string;
}

/** How long typing pauses before the query is sent; the bare `/` is sent at once. */
const DEBOUNCE_MS = 150;
const PAGE_SIZE = 20;
/** The server's limit on `query` (bytes); a longer `/…` is not a template name. */
const MAX_QUERY_CHARS = 64;
const PREVIEW_CHARS = 90;

let pickers = 0;

/**
 * Attaches the picker to `input`; `values` is read when a template is inserted. Returns a function that removes the
 * picker (listeners, popup, ARIA attributes).
 */
export function attachTemplatePicker(
  input: HTMLTextAreaElement,
  values: () => PlaceholderValues,
  client: SmsClient,
): () => void {
  const popupId = `template-picker-${++pickers}`;
  const list = h("ul", {
    class: "tpl-picker",
    id: popupId,
    role: "listbox",
    "aria-label": "Templates",
    "data-testid": "template-picker",
    hidden: true,
  });
  const status = h("div", { class: "tpl-picker-status", role: "status", "data-testid": "template-picker-status" });
  const popup = h("div", { class: "tpl-picker-pop", "data-testid": "template-picker-popup", hidden: true }, list, status);
  // Clicks inside the popup must not take the focus (and the caret) from the text box.
  popup.addEventListener("mousedown", (e) => e.preventDefault());

  let open = false;
  /** The query the shown options answer, or null while they are on their way. */
  let shownFor: string | null = null;
  let wanted = "";
  let options: Template[] = [];
  let active = -1;
  let timer = 0;
  let seq = 0;
  /** Escape was pressed: stay closed until the text stops starting with `/`. */
  let dismissed = false;
  /** Enter or Tab came before the answer: insert its first option when it arrives. */
  let acceptWhenLoaded = false;
  let inserting = false;

  input.setAttribute("aria-haspopup", "listbox");
  input.setAttribute("aria-autocomplete", "list");
  input.setAttribute("aria-controls", popupId);
  input.setAttribute("aria-expanded", "false");

  /** The `/query` before the caret, when the text starts with `/` and the caret is in that first line. */
  function trigger(): string | null {
    const v = input.value;
    const caret = input.selectionStart ?? v.length;
    if (!v.startsWith("/") || caret < 1 || input.selectionEnd !== input.selectionStart) return null;
    const query = v.slice(1, caret);
    if (query.includes("\n") || query.length > MAX_QUERY_CHARS) return null;
    return query;
  }

  function place(): void {
    if (!popup.isConnected) input.insertAdjacentElement("afterend", popup);
    const parent = input.offsetParent as HTMLElement | null;
    if (!parent) return;
    // Absolutely positioned in the same containing block as the text box: its bottom edge just above the box's top.
    popup.style.left = `${input.offsetLeft}px`;
    popup.style.width = `${input.offsetWidth}px`;
    popup.style.bottom = `${parent.clientHeight - input.offsetTop + 6}px`;
  }

  function show(): void {
    if (!open) {
      open = true;
      popup.hidden = false;
      list.hidden = false;
      input.setAttribute("aria-expanded", "true");
      window.addEventListener("resize", place);
    }
    place();
  }

  function close(): void {
    window.clearTimeout(timer);
    timer = 0;
    seq++;
    acceptWhenLoaded = false;
    shownFor = null;
    options = [];
    active = -1;
    if (!open) return;
    open = false;
    popup.hidden = true;
    list.replaceChildren();
    status.textContent = "";
    input.setAttribute("aria-expanded", "false");
    input.removeAttribute("aria-activedescendant");
    window.removeEventListener("resize", place);
  }

  /** For tests and styles: `loading`, or `ready`/`error` with the query the popup answers in data-query. */
  function mark(state: "loading" | "ready" | "error", query: string | null): void {
    popup.dataset.state = state;
    if (query === null) delete popup.dataset.query;
    else popup.dataset.query = query;
  }

  function optionId(i: number): string {
    return `${popupId}-opt-${i}`;
  }

  function render(): void {
    list.replaceChildren(
      ...options.map((t, i) => {
        const preview = t.body.length > PREVIEW_CHARS ? `${t.body.slice(0, PREVIEW_CHARS)}…` : t.body;
        return h(
          "li",
          {
            class: "tpl-option",
            id: optionId(i),
            role: "option",
            "aria-selected": i === active ? "true" : "false",
            "data-testid": "template-option",
            "data-template-id": t.id,
            "data-name": t.displayName,
            "data-shared": t.shared ? "true" : "false",
            onmousemove: () => setActive(i),
            onclick: () => insert(i),
          },
          h(
            "div",
            { class: "tpl-option-head" },
            userText("span", { class: "tpl-option-name", "data-testid": "template-option-name" }, t.displayName),
            t.shared ? h("span", { class: "chip tpl-shared" }, "Shared") : null,
          ),
          userText("div", { class: "tpl-option-body" }, preview),
        );
      }),
    );
    list.hidden = options.length === 0;
    markActive();
  }

  function markActive(): void {
    list.querySelectorAll<HTMLElement>('[role="option"]').forEach((el, i) => {
      el.setAttribute("aria-selected", i === active ? "true" : "false");
      el.classList.toggle("active", i === active);
    });
    if (active >= 0) {
      input.setAttribute("aria-activedescendant", optionId(active));
      document.getElementById(optionId(active))?.scrollIntoView({ block: "nearest" });
    } else {
      input.removeAttribute("aria-activedescendant");
    }
  }

  function setActive(i: number): void {
    if (i === active) return;
    active = i;
    markActive();
  }

  async function load(query: string, mine: number): Promise<void> {
    try {
      const res = await client.listTemplates({ query, pageSize: PAGE_SIZE });
      if (mine !== seq) return;
      options = res.templates;
      shownFor = query;
      mark("ready", query);
      active = options.length ? 0 : -1;
      status.textContent = options.length ? "" : query ? `No templates start with “${query}”.` : "No templates yet.";
      render();
      place();
      if (acceptWhenLoaded) {
        acceptWhenLoaded = false;
        if (options.length) insert(0);
      }
    } catch (err) {
      if (mine !== seq) return;
      acceptWhenLoaded = false;
      shownFor = query;
      mark("error", query);
      options = [];
      active = -1;
      render();
      status.textContent =
        errorCode(err) === Code.Unimplemented ? "Templates are not available on this server." : "Could not load templates.";
      place();
    }
  }

  /** Follows the text: opens, re-queries or closes. */
  function refresh(): void {
    if (inserting) return;
    const query = trigger();
    if (query === null) {
      dismissed = false;
      close();
      return;
    }
    if (dismissed) return;
    const wasOpen = open;
    show();
    if (wasOpen && query === wanted) return;
    wanted = query;
    window.clearTimeout(timer);
    const mine = ++seq;
    shownFor = null;
    mark("loading", null);
    if (!options.length) status.textContent = "Loading…";
    timer = window.setTimeout(
      () => {
        timer = 0;
        void load(query, mine);
      },
      wasOpen || query ? DEBOUNCE_MS : 0,
    );
  }

  function insert(i: number): void {
    const t = options[i];
    if (!t) return;
    const caret = input.selectionStart ?? input.value.length;
    const rest = input.value.slice(caret);
    const text = fillPlaceholders(t.body, values());
    const max = input.maxLength > 0 ? input.maxLength : Infinity;
    const value = (text + rest).slice(0, max);
    close();
    inserting = true;
    try {
      input.value = value;
      const at = Math.min(text.length, value.length);
      input.setSelectionRange(at, at);
      input.focus();
      input.dispatchEvent(new Event("input", { bubbles: true }));
    } finally {
      inserting = false;
    }
  }

  const onKeyDown = (e: KeyboardEvent) => {
    if (e.target !== input || !open || e.isComposing) return;
    const stop = () => {
      e.preventDefault();
      e.stopImmediatePropagation();
    };
    switch (e.key) {
      case "ArrowDown":
        if (!options.length) return;
        stop();
        setActive((active + 1) % options.length);
        break;
      case "ArrowUp":
        if (!options.length) return;
        stop();
        setActive(active <= 0 ? options.length - 1 : active - 1);
        break;
      case "Enter":
      case "Tab":
        if (e.shiftKey || e.altKey || e.ctrlKey || e.metaKey) return;
        if (shownFor === null) {
          // The answer for what was typed is on its way: take its first option when it comes.
          stop();
          acceptWhenLoaded = true;
        } else if (active >= 0) {
          stop();
          insert(active);
        } else if (e.key === "Tab") {
          close();
        } else {
          // Nothing to insert: the popup steps aside and Enter does what it does without it.
          dismissed = true;
          close();
        }
        break;
      case "Escape":
        stop();
        dismissed = true;
        close();
        break;
    }
  };
  const onInput = () => refresh();
  // The caret moved within or out of the `/query` (clicks, Home/End, arrows while closed).
  const onCaret = (e: Event) => {
    if (e instanceof KeyboardEvent && (e.key === "ArrowUp" || e.key === "ArrowDown") && open) return;
    if (trigger() === null) {
      dismissed = false;
      close();
    }
  };
  const onBlur = () => close();

  const win = input.ownerDocument.defaultView ?? window;
  win.addEventListener("keydown", onKeyDown, true);
  input.addEventListener("input", onInput);
  input.addEventListener("keyup", onCaret);
  input.addEventListener("click", onCaret);
  input.addEventListener("blur", onBlur);

  return () => {
    close();
    win.removeEventListener("keydown", onKeyDown, true);
    input.removeEventListener("input", onInput);
    input.removeEventListener("keyup", onCaret);
    input.removeEventListener("click", onCaret);
    input.removeEventListener("blur", onBlur);
    popup.remove();
    for (const a of ["aria-haspopup", "aria-autocomplete", "aria-controls", "aria-expanded", "aria-activedescendant"]) {
      input.removeAttribute(a);
    }
  };
}
