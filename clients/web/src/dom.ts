// Small DOM helpers: h("div", { class: "x", "data-testid": "y", onclick: fn }, child, …), keyed re-rendering,
// infinite-scroll sentinels, icons.

type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, unknown>;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs | null = null,
  ...children: (Child | Child[])[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on") && typeof value === "function") {
        el.addEventListener(key.slice(2), value as EventListener);
      } else if (key === "class") {
        el.className = String(value);
      } else if (key === "value" && "value" in el) {
        (el as HTMLInputElement).value = String(value);
      } else if (value === true) {
        el.setAttribute(key, "");
      } else {
        el.setAttribute(key, String(value));
      }
    }
  }
  append(el, children);
  return el;
}

/**
 * Text that came from outside the UI (a body, a number, a contact id, a user id, a server message quoting input), in
 * an element of its own with `dir="auto"` and the `user-text` class (see style.css): bidi controls in it (U+202E …)
 * reorder its own characters only, never the labels, times and badges around it.
 */
export function userText<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs | null,
  text: string,
): HTMLElementTagNameMap[K] {
  const el = h(tag, { ...attrs, dir: "auto" }, text);
  el.classList.add("user-text");
  return el;
}

function append(el: Node, children: (Child | Child[])[]): void {
  for (const c of children) {
    if (Array.isArray(c)) append(el, c);
    else if (c === null || c === undefined || c === false) continue;
    else el.appendChild(typeof c === "object" ? c : document.createTextNode(String(c)));
  }
}

/** Makes parent's children exactly `nodes`, in order, moving only what is out of place. */
export function syncChildren(parent: Element, nodes: Node[]): void {
  let cur = parent.firstChild;
  for (const node of nodes) {
    if (cur === node) {
      cur = cur.nextSibling;
    } else {
      parent.insertBefore(node, cur);
    }
  }
  while (cur) {
    const next = cur.nextSibling;
    parent.removeChild(cur);
    cur = next;
  }
}

/** An inline SVG icon from a path list (24×24 viewBox, stroked). */
export function icon(paths: string, label?: string): SVGSVGElement {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "16");
  svg.setAttribute("height", "16");
  svg.setAttribute("fill", "none");
  svg.setAttribute("stroke", "currentColor");
  svg.setAttribute("stroke-width", "2");
  svg.setAttribute("stroke-linecap", "round");
  svg.setAttribute("stroke-linejoin", "round");
  if (label) {
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
  } else {
    svg.setAttribute("aria-hidden", "true");
  }
  for (const d of paths.split("|")) {
    const p = document.createElementNS(ns, "path");
    p.setAttribute("d", d);
    svg.appendChild(p);
  }
  return svg;
}

/**
 * Elements kept by key and rebuilt only when what they show changed, so that re-rendering a list moves the nodes
 * it already has (keeping focus, selection and scroll) instead of recreating them.
 */
export class KeyedElements {
  private readonly entries = new Map<string, { deps: readonly unknown[]; el: HTMLElement }>();
  private readonly used = new Set<string>();

  /** The element for `key`; `build` makes a new one when any of `deps` is not (===) what the last was built from. */
  get(key: string, deps: readonly unknown[], build: () => HTMLElement): HTMLElement {
    this.used.add(key);
    const entry = this.entries.get(key);
    if (entry && entry.deps.length === deps.length && entry.deps.every((d, i) => d === deps[i])) return entry.el;
    const el = build();
    this.entries.set(key, { deps, el });
    return el;
  }

  /** Forgets the elements not asked for since the last prune. */
  prune(): void {
    for (const key of this.entries.keys()) if (!this.used.has(key)) this.entries.delete(key);
    this.used.clear();
  }
}

/** Infinite scroll: `onNear` runs whenever `sentinel` comes within `margin` px of `scroller`'s view. */
export function watchSentinel(
  sentinel: HTMLElement,
  scroller: HTMLElement,
  margin: number,
  onNear: () => void,
): IntersectionObserver {
  const observer = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) onNear();
  }, { root: scroller, rootMargin: `${margin}px` });
  observer.observe(sentinel);
  return observer;
}

/**
 * Whether `sentinel` is still near `scroller`'s view. The observer reports changes only, so after a short page on a
 * tall screen, where the sentinel never left the view, this says whether to keep loading.
 */
export function sentinelInView(sentinel: HTMLElement, scroller: HTMLElement): boolean {
  if (!sentinel.isConnected || scroller.clientHeight === 0) return false;
  const s = sentinel.getBoundingClientRect();
  const r = scroller.getBoundingClientRect();
  return s.top < r.bottom + 200 && s.bottom > r.top - 200;
}

/** Enter submits and Shift+Enter adds a line; an input method's Enter (composing) is left alone. */
export function submitOnEnter(input: HTMLTextAreaElement, submit: () => void): void {
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      submit();
    }
  });
}
