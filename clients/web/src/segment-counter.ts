// The composer's length line: characters, SMS segments and encoding, naming the character that forces UCS-2 (the
// count follows Twilio's rules, segments.ts). What is sent is the trimmed text, so that is what is counted.
import { h, userText } from "./dom.js";
import { readableChar } from "./format.js";
import { countSegments, GSM7 } from "./segments.js";

function plural(n: number, one: string, many: string): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** "142 chars · 1 segment · GSM-7" and, for UCS-2, the character to blame; null for an empty body. */
export function describeLength(body: string): { summary: string; culprit: string; title: string } | null {
  if (!body) return null;
  const c = countSegments(body);
  const chars = [...body].length;
  const summary = [plural(chars, "char", "chars"), plural(c.segments, "segment", "segments"), c.encoding].join(" · ");
  const unit = c.encoding === GSM7 ? "GSM-7 septets" : "UTF-16 units";
  const title =
    c.segments > 1
      ? `${c.units} ${unit}: ${c.perSegment} per segment when split`
      : `${c.units} of ${c.perSegment} ${unit} in one segment`;
  return { summary, culprit: c.firstNonGsm ? readableChar(c.firstNonGsm) : "", title };
}

/** The counter's element: a polite live region, empty (and taking no room) while there is nothing to count. */
export function counterElement(): HTMLElement {
  return h("div", {
    class: "counter",
    "data-testid": "composer-counter",
    "aria-live": "polite",
    "aria-atomic": "true",
  });
}

/** Shows `body`'s length in `el` (empty: nothing); the culprit character is isolated, it was typed by a user. */
export function renderCounter(el: HTMLElement, body: string): void {
  const d = describeLength(body);
  if (!d) {
    if (el.firstChild) el.replaceChildren();
    el.removeAttribute("title");
    delete el.dataset.encoding;
    return;
  }
  el.title = d.title;
  el.dataset.encoding = d.culprit ? "ucs2" : "gsm7";
  el.replaceChildren(
    d.summary,
    ...(d.culprit
      ? [" because of ", userText("span", { class: "counter-char", "data-testid": "counter-char" }, d.culprit)]
      : []),
  );
}
