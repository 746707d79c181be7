// What the two ways of sending share: the body limit, and request ids that make Send idempotent, one per composed
// payload, reused until a send of it succeeds, so double clicks and retries after an error send once.

/** The longest body the forms accept: Twilio's limit for one message. */
export const MAX_BODY_CHARS = 1600;

export interface SendPayload {
  to: string;
  body: string;
  contactId: string;
}

/** crypto.randomUUID only exists in secure contexts; fall back to getRandomValues elsewhere (plain http). */
export function newRequestId(): string {
  if (typeof crypto.randomUUID === "function") return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const hex = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** The request id of the payload not yet sent from each slot (a conversation's composer, the new-message form). */
export class RequestIds {
  private readonly pending = new Map<string, { requestId: string; key: string }>();

  /** `payload` with its request id: the same as last time while the slot's payload is unchanged. */
  withId(slot: string, payload: SendPayload): SendPayload & { requestId: string } {
    const key = JSON.stringify([payload.to, payload.body, payload.contactId]);
    let pending = this.pending.get(slot);
    if (!pending || pending.key !== key) {
      pending = { requestId: newRequestId(), key };
      this.pending.set(slot, pending);
    }
    return { ...payload, requestId: pending.requestId };
  }

  /** The slot's payload was sent: the next one gets a fresh id. */
  done(slot: string): void {
    this.pending.delete(slot);
  }
}
