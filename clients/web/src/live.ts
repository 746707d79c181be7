// The live stream: Subscribe with resume tokens, reconnect with backoff, and a watchdog for silent streams.
import { Code } from "@connectrpc/connect";
import { errorCode, errorText, type SmsClient } from "./api.js";
import type { Event } from "./gen/sms/v1/types_pb.js";

export type LiveState = "connecting" | "connected" | "reconnecting";

export interface LiveHandlers {
  /** One event, in log order. */
  onEvent(event: Event): void;
  /** The server cannot replay what we missed: re-list everything. The stream resumes from last_event_id. */
  onResync(reason: string): void;
  /** A stream (re)opened. `resumed` is false when it started without a resume token (a gap is possible). */
  onConnected(resumed: boolean): void;
  onState(state: LiveState, detail: string): void;
  /** The server rejected our token (`err`): stop and sign out. */
  onUnauthenticated(err: unknown): void;
}

const MIN_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 5000;
/** Heartbeats come every ~15 s; a stream silent for this long is treated as dead. */
const SILENCE_MS = 45_000;

export class LiveConnection {
  private lastEventId = "";
  private stopped = false;
  private abort: AbortController | null = null;
  private wake: (() => void) | null = null;
  state: LiveState = "connecting";

  constructor(
    private readonly client: SmsClient,
    private readonly allOwners: boolean,
    private readonly handlers: LiveHandlers,
  ) {}

  get resumeToken(): string {
    return this.lastEventId;
  }

  start(): void {
    void this.loop();
  }

  stop(): void {
    this.stopped = true;
    this.abort?.abort();
    this.wake?.();
  }

  /** Drops the current stream and reconnects at once (e.g. the browser came back online). */
  kick(): void {
    this.abort?.abort();
    this.wake?.();
  }

  private setState(state: LiveState, detail = ""): void {
    this.state = state;
    this.handlers.onState(state, detail);
  }

  private async loop(): Promise<void> {
    let backoff = MIN_BACKOFF_MS;
    while (!this.stopped) {
      const abort = new AbortController();
      this.abort = abort;
      const resumed = this.lastEventId !== "";
      let opened = false;
      const markOpen = () => {
        if (opened || abort.signal.aborted) return;
        opened = true;
        backoff = MIN_BACKOFF_MS;
        this.setState("connected");
        this.handlers.onConnected(resumed);
      };
      let watchdog = 0;
      const feed = () => {
        window.clearTimeout(watchdog);
        watchdog = window.setTimeout(() => abort.abort(), SILENCE_MS);
      };
      let detail = "stream ended";
      try {
        feed();
        const stream = this.client.subscribe(
          { resumeToken: this.lastEventId, allOwners: this.allOwners },
          { signal: abort.signal, onHeader: markOpen },
        );
        for await (const res of stream) {
          feed();
          markOpen();
          const r = res.response;
          switch (r.case) {
            case "event":
              this.handlers.onEvent(r.value);
              if (r.value.id) this.lastEventId = r.value.id;
              break;
            case "heartbeat":
              if (r.value.lastEventId) this.lastEventId = r.value.lastEventId;
              break;
            case "resyncRequired":
              this.lastEventId = r.value.lastEventId;
              this.handlers.onResync(r.value.reason);
              break;
          }
        }
      } catch (err) {
        if (this.stopped) break;
        if (errorCode(err) === Code.Unauthenticated) {
          this.stopped = true;
          this.handlers.onUnauthenticated(err);
          break;
        }
        detail = abort.signal.aborted ? "stream silent, reconnecting" : errorText(err);
      } finally {
        window.clearTimeout(watchdog);
      }
      if (this.stopped) break;
      this.setState("reconnecting", detail);
      const delay = backoff * (0.8 + Math.random() * 0.4);
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
      await new Promise<void>((resolve) => {
        const t = window.setTimeout(resolve, delay);
        this.wake = () => {
          window.clearTimeout(t);
          resolve();
        };
      });
      this.wake = null;
    }
  }
}
