// What the inbox's views share: the client, who is signed in, the conversations known so far, and error reporting.
// The app provides it; views depend on this interface rather than on the app.
import type { Claims, SmsClient } from "./api.js";
import type { Conversation } from "./gen/sms/v1/types_pb.js";
import type { LatestById } from "./versions.js";

export interface Inbox {
  readonly client: SmsClient;
  readonly claims: Claims;
  readonly isAdmin: boolean;
  /** Every conversation listed or streamed so far; the list pages it in, the thread reads its own. */
  readonly conversations: LatestById<Conversation>;
  /** Keeps `c` unless the version held is newer, then shows it wherever it appears. */
  upsertConversation(c: Conversation): void;
  /** Reads one conversation and upserts it; a failure is reported. */
  fetchConversation(id: string): Promise<void>;
  /** Shows a failed call as `<what>: <error>`; a rejected token signs out instead, a cancelled call is silent. */
  reportError(err: unknown, what: string): void;
}

/** Admins see whose a conversation is when it is someone else's. */
export function showsOwner(inbox: Inbox, c: Conversation): boolean {
  return inbox.isAdmin && !!c.owner && c.owner !== inbox.claims.sub;
}
