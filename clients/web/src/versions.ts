// Objects kept by id, where a newer version replaces the one held and an older one is ignored: pages, RPC answers
// and live events can arrive in any order.
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { tsMillis } from "./format.js";
import type { Conversation, Message } from "./gen/sms/v1/types_pb.js";

/** True when `incoming` is at least as new as `existing` by update_time, or either has none to compare. */
function updatedSince(incoming: { updateTime?: Timestamp }, existing: { updateTime?: Timestamp }): boolean {
  const a = tsMillis(incoming.updateTime);
  const b = tsMillis(existing.updateTime);
  return a === 0 || b === 0 || a >= b;
}

export function newerConversation(incoming: Conversation, existing: Conversation): boolean {
  return updatedSince(incoming, existing);
}

export function newerMessage(incoming: Message, existing: Message): boolean {
  // A message's history only grows, so it orders two versions even within one millisecond, whatever
  // order two server processes appended their events in.
  const grown = incoming.statusHistory.length - existing.statusHistory.length;
  return grown !== 0 ? grown > 0 : updatedSince(incoming, existing);
}

export class LatestById<T extends { id: string }> {
  private readonly items = new Map<string, T>();

  constructor(private readonly isNewer: (incoming: T, existing: T) => boolean) {}

  /** Keeps `item` unless the version held is newer; false when it was ignored (or has no id). */
  put(item: T): boolean {
    if (!item.id) return false;
    const existing = this.items.get(item.id);
    if (existing && !this.isNewer(item, existing)) return false;
    this.items.set(item.id, item);
    return true;
  }

  get(id: string): T | undefined {
    return this.items.get(id);
  }

  has(id: string): boolean {
    return this.items.has(id);
  }

  values(): T[] {
    return [...this.items.values()];
  }

  get size(): number {
    return this.items.size;
  }

  clear(): void {
    this.items.clear();
  }
}
