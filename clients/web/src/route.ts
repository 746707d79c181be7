// The hash routes: `#/` the list, `#/c/<id>` a thread, `#/new` the new-message form, `#/queue` the admin dashboard.

export type Route = { kind: "inbox" } | { kind: "conv"; id: string } | { kind: "new" } | { kind: "queue" };

export function parseRoute(hash: string): Route {
  const path = hash.replace(/^#\/?/, "");
  if (path.startsWith("c/") && path.length > 2) return { kind: "conv", id: decodeURIComponent(path.slice(2)) };
  if (path === "new") return { kind: "new" };
  if (path === "queue") return { kind: "queue" };
  return { kind: "inbox" };
}

export function conversationHash(id: string): string {
  return `#/c/${encodeURIComponent(id)}`;
}

/** Navigates within the page; the app's hashchange listener shows the route. */
export function go(hash: string): void {
  if (window.location.hash !== hash) window.location.hash = hash;
}
