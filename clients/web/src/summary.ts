// The signed-in user's counts (GetInboxSummary): mine, unread, unassigned. Read on start and whenever the stream
// (re)connects or a conversation changes (at most every 300 ms); the page title carries the unread count.
import { Code } from "@connectrpc/connect";
import { errorCode, type SmsClient } from "./api.js";

export interface Counts {
  mine: number;
  unread: number;
  unassigned: number;
}

const MIN_INTERVAL_MS = 300;
const TITLE = "SMS Inbox";

export class InboxSummary {
  counts: Counts | null = null;
  private timer = 0;
  private inFlight = false;
  private again = false;
  private stopped = false;
  private last = 0;

  constructor(
    private readonly client: SmsClient,
    private readonly onCounts: (counts: Counts) => void,
    private readonly onError: (err: unknown) => void,
  ) {}

  /** Asks for fresh counts soon (coalescing bursts of events into one call). */
  bump(): void {
    if (this.stopped || this.timer) return;
    const wait = Math.max(0, this.last + MIN_INTERVAL_MS - Date.now());
    this.timer = window.setTimeout(() => {
      this.timer = 0;
      void this.fetch();
    }, wait);
  }

  destroy(): void {
    this.stopped = true;
    window.clearTimeout(this.timer);
    document.title = TITLE;
  }

  private async fetch(): Promise<void> {
    if (this.inFlight) {
      this.again = true;
      return;
    }
    this.inFlight = true;
    this.last = Date.now();
    try {
      const res = await this.client.getInboxSummary({});
      if (this.stopped) return;
      this.counts = { mine: res.mine, unread: res.unread, unassigned: res.unassigned };
      document.title = res.unread > 0 ? `(${res.unread}) ${TITLE}` : TITLE;
      this.onCounts(this.counts);
    } catch (err) {
      if (!this.stopped && errorCode(err) !== Code.Unimplemented) this.onError(err);
    } finally {
      this.inFlight = false;
      if (this.again) {
        this.again = false;
        this.bump();
      }
    }
  }
}
