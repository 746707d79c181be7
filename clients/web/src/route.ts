// The hash routes: `#/` the list, `#/c/<id>` a thread, `#/c/<id>/m/<message id>` a thread showing one message (a
// search hit), `#/new` the new-message form, `#/queue` the admin dashboard, `#/templates` the templates page.

export type Route =
  | { kind: "inbox" }
  | { kind: "conv"; id: string; messageId: string }
  | { kind: "new" }
  | { kind: "queue" }
  | { kind: "templates" };

export function parseRoute(hash: string): Route {
  const path = hash.replace(/^#\/?/, "");
  if (path.startsWith("c/") && path.length > 2) {
    const [id, m, messageId] = path.slice(2).split("/");
    if (id) {
      return {
        kind: "conv",
        id: decodeURIComponent(id),
        messageId: m === "m" && messageId ? decodeURIComponent(messageId) : "",
      };
    }
  }
  if (path === "new") return { kind: "new" };
  if (path === "queue") return { kind: "queue" };
  if (path === "templates") return { kind: "templates" };
  return { kind: "inbox" };
}

export function conversationHash(id: string, messageId = ""): string {
  const base = `#/c/${encodeURIComponent(id)}`;
  return messageId ? `${base}/m/${encodeURIComponent(messageId)}` : base;
}

/** Navigates within the page; the app's hashchange listener shows the route. */
export function go(hash: string): void {
  if (window.location.hash !== hash) window.location.hash = hash;
}
