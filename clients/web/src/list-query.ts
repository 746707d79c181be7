// What the conversation list shows: a view (Mine, Unassigned, All), filters (unread, opted out, a label) and free
// text. The same choice becomes the ListConversations request (AIP-160 filter + query) and the test each
// conversation held locally must pass, so live updates move rows in and out without a reload.
import type { Conversation } from "./gen/sms/v1/types_pb.js";

export type ListView = "mine" | "unassigned" | "all";

export interface ListQuery {
  view: ListView;
  unread: boolean;
  optedOut: boolean;
  /** A label the conversation must carry; "" for any. */
  label: string;
  /** Free text (contact number in any format, name, last message); "" for none. */
  text: string;
}

export const VIEW_NAMES: Record<ListView, string> = { mine: "Mine", unassigned: "Unassigned", all: "All" };

/** Admins start on every conversation, agents on their own. */
export function defaultQuery(isAdmin: boolean): ListQuery {
  return { view: isAdmin ? "all" : "mine", unread: false, optedOut: false, label: "", text: "" };
}

/** A string literal of the filter language: double quotes, with `"` and `\` escaped. */
function literal(value: string): string {
  return `"${value.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
}

/**
 * The request's `filter` and `query`. An agent's Mine view asks for everything they see (their own and the
 * unassigned ones) and keeps their own locally: `assignee = …` is the admins' filter.
 */
export function listRequest(q: ListQuery, me: string, isAdmin: boolean): { filter: string; query: string } {
  const terms: string[] = [];
  if (q.view === "unassigned") terms.push("unassigned");
  else if (q.view === "mine" && isAdmin) terms.push(`assignee = ${literal(me)}`);
  if (q.unread) terms.push("unread");
  if (q.optedOut) terms.push("opted_out");
  if (q.label) terms.push(`label = ${literal(q.label)}`);
  return { filter: terms.join(" AND "), query: q.text.trim() };
}

/** Whether `c`, as held now, belongs in the list for `q` (free text is the server's to match: not tested here). */
export function matches(q: ListQuery, c: Conversation, me: string): boolean {
  if (q.view === "mine" && c.owner !== me) return false;
  if (q.view === "unassigned" && c.owner !== "") return false;
  if (q.unread && c.unreadCount <= 0) return false;
  if (q.optedOut && !c.optedOut) return false;
  if (q.label && !c.labels.includes(q.label)) return false;
  return true;
}

export function sameQuery(a: ListQuery, b: ListQuery): boolean {
  return (
    a.view === b.view && a.unread === b.unread && a.optedOut === b.optedOut && a.label === b.label && a.text === b.text
  );
}
