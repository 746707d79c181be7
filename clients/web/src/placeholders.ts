// Filling a template's placeholders: {{contact_name}}, {{contact_number}}, {{contact_id}}, {{agent}} (spaces inside the
// braces allowed, any case). A value that is unknown (empty, or a placeholder the UI does not know) becomes nothing,
// never the braces themselves: a contact without a name gets "Hi , …" rather than "Hi {{contact_name}}, …".
import type { PlaceholderValues } from "./template-picker.js";

/** The placeholders a template body may use (types.proto, Template.body). */
export const PLACEHOLDER_NAMES = ["contact_name", "contact_number", "contact_id", "agent"] as const;

const PLACEHOLDER = /\{\{\s*([A-Za-z0-9_]*)\s*\}\}/g;

function isKnown(name: string): name is keyof PlaceholderValues {
  return (PLACEHOLDER_NAMES as readonly string[]).includes(name);
}

/** `body` with every placeholder replaced by its value (trimmed), or by nothing when there is none. */
export function fillPlaceholders(body: string, values: PlaceholderValues): string {
  return body.replace(PLACEHOLDER, (_whole, raw: string) => {
    const name = raw.toLowerCase();
    if (!isKnown(name)) return "";
    const value = values[name];
    return typeof value === "string" ? value.trim() : "";
  });
}

/** The placeholders in `body` the server would refuse (INVALID_ARGUMENT), to warn before saving. */
export function unknownPlaceholders(body: string): string[] {
  const found = new Set<string>();
  for (const m of body.matchAll(PLACEHOLDER)) if (!isKnown(m[1])) found.add(m[0]);
  return [...found];
}
