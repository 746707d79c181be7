// Display helpers: times, statuses, numbers.
import { timestampDate, type Duration, type Timestamp } from "@bufbuild/protobuf/wkt";
import { parsePhoneNumberFromString } from "libphonenumber-js";
import { MessageStatus } from "./gen/sms/v1/types_pb.js";

export function tsMillis(ts: Timestamp | undefined): number {
  if (!ts) return 0;
  return Number(ts.seconds) * 1000 + Math.floor(ts.nanos / 1e6);
}

export function tsDate(ts: Timestamp | undefined): Date | null {
  return ts && (ts.seconds !== 0n || ts.nanos !== 0) ? timestampDate(ts) : null;
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const weekdayFmt = new Intl.DateTimeFormat(undefined, { weekday: "short" });
const dateFmt = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
const fullDateFmt = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric" });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: "long", month: "long", day: "numeric", year: "numeric" });

function startOfDay(d: Date): number {
  return new Date(d.getFullYear(), d.getMonth(), d.getDate()).getTime();
}

/** List-row time: 14:05 today, "Tue" this week, "Mar 3" this year, else with the year. */
export function shortWhen(ts: Timestamp | undefined): string {
  const d = tsDate(ts);
  if (!d) return "";
  const now = new Date();
  const days = (startOfDay(now) - startOfDay(d)) / 86_400_000;
  if (days <= 0) return timeFmt.format(d);
  if (days < 7) return weekdayFmt.format(d);
  if (d.getFullYear() === now.getFullYear()) return dateFmt.format(d);
  return fullDateFmt.format(d);
}

export function clockTime(ts: Timestamp | undefined): string {
  const d = tsDate(ts);
  return d ? timeFmt.format(d) : "";
}

export function fullTime(ts: Timestamp | undefined): string {
  const d = tsDate(ts);
  return d ? fullFmt.format(d) : "";
}

export function dayKey(ts: Timestamp | undefined): string {
  const d = tsDate(ts);
  return d ? `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}` : "unknown";
}

export function dayLabel(ts: Timestamp | undefined): string {
  const d = tsDate(ts);
  if (!d) return "";
  const days = (startOfDay(new Date()) - startOfDay(d)) / 86_400_000;
  if (days === 0) return "Today";
  if (days === 1) return "Yesterday";
  return dayFmt.format(d);
}

/** "delivered", "failed", … (the enum name without its prefix, lower case). */
export function statusName(status: MessageStatus): string {
  const name = MessageStatus[status] as string | undefined;
  return name ? name.replace(/^MESSAGE_STATUS_/, "").toLowerCase() : "unknown";
}

export type Tick = "pending" | "sent" | "delivered" | "read" | "failed" | "canceled" | "none";

export function tickOf(status: MessageStatus): Tick {
  switch (status) {
    case MessageStatus.ACCEPTED:
    case MessageStatus.SCHEDULED:
    case MessageStatus.QUEUED:
    case MessageStatus.SENDING:
    case MessageStatus.UNSPECIFIED:
      return "pending";
    case MessageStatus.SENT:
      return "sent";
    case MessageStatus.DELIVERED:
    case MessageStatus.PARTIALLY_DELIVERED:
      return "delivered";
    case MessageStatus.READ:
      return "read";
    case MessageStatus.FAILED:
    case MessageStatus.UNDELIVERED:
      return "failed";
    case MessageStatus.CANCELED:
      return "canceled";
    default:
      return "none";
  }
}

export function durationSeconds(d: Duration | undefined): number {
  return d ? Number(d.seconds) + d.nanos / 1e9 : 0;
}

export function humanAge(seconds: number): string {
  if (seconds <= 0) return "—";
  if (seconds < 60) return `${Math.round(seconds)} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${Math.round(seconds % 60)} s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  return `${Math.floor(seconds / 86400)} d ${Math.floor((seconds % 86400) / 3600)} h`;
}

export function int(n: bigint | number): string {
  return Number(n).toLocaleString();
}

/**
 * A contact number as people of its own region write it: +14155550123 → (415) 555-0123, +442071838750 →
 * 020 7183 8750 (libphonenumber's national format for the number's country). What cannot be parsed is shown as is.
 */
export function nationalNumber(e164: string): string {
  if (!e164) return "";
  try {
    const parsed = parsePhoneNumberFromString(e164);
    return parsed?.country ? parsed.formatNational() : e164;
  } catch {
    return e164;
  }
}

/** What the UI calls a conversation's contact: their name when one is set, else their number, national format. */
export function contactDisplay(c: { contactName: string; contactNumber: string }): string {
  return c.contactName.trim() || nationalNumber(c.contactNumber);
}

const whenFmt = new Intl.DateTimeFormat(undefined, {
  weekday: "short",
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
});

/** A time to come, in the viewer's zone, with its day: "Fri, Dec 4, 18:21" (a scheduled send). */
export function whenAt(ts: Timestamp | undefined): string {
  const d = tsDate(ts);
  return d ? whenFmt.format(d) : "";
}

/** The same for a Date. */
export function whenAtDate(d: Date): string {
  return whenFmt.format(d);
}

/** Short words for common Twilio error codes (https://www.twilio.com/docs/api/errors). */
const TWILIO_ERROR_WORDS: Readonly<Record<number, string>> = {
  21211: "Invalid phone number",
  21408: "Sending to this region is not enabled",
  21610: "The contact opted out (STOP)",
  21612: "Cannot route to this number",
  21614: "Not a mobile number",
  30001: "Queue overflow",
  30002: "Account suspended",
  30003: "Unreachable handset",
  30004: "Message blocked",
  30005: "Unknown destination",
  30006: "Landline or unreachable carrier",
  30007: "Filtered by the carrier",
  30008: "Unknown error",
};

/** Codes that say the number itself cannot receive SMS: sending again cannot succeed (RetryMessage refuses). */
export const NOT_RETRYABLE_CODES: ReadonlySet<number> = new Set([21211, 21614]);

/**
 * A failure in words: the table's description of `code` when it is a known one (`known` true), else the error
 * message stored with the message (from Twilio, shown isolated by the caller), else "".
 */
export function errorWords(code: number, stored: string): { text: string; known: boolean } {
  const words = TWILIO_ERROR_WORDS[code];
  if (words) return { text: words, known: true };
  return { text: stored.trim(), known: false };
}

/** Names of invisible or confusable characters that may force UCS-2 unnoticed. */
const CHAR_NAMES: Readonly<Record<number, string>> = {
  0x09: "tab",
  0x0b: "vertical tab",
  0x7f: "delete",
  0xa0: "no-break space",
  0xad: "soft hyphen",
  0x2002: "en space",
  0x2003: "em space",
  0x2009: "thin space",
  0x200b: "zero-width space",
  0x200c: "zero-width non-joiner",
  0x200d: "zero-width joiner",
  0x200e: "left-to-right mark",
  0x200f: "right-to-left mark",
  0x2028: "line separator",
  0x2029: "paragraph separator",
  0x202a: "left-to-right embedding",
  0x202b: "right-to-left embedding",
  0x202c: "pop directional formatting",
  0x202d: "left-to-right override",
  0x202e: "right-to-left override",
  0x202f: "narrow no-break space",
  0x2060: "word joiner",
  0x2066: "left-to-right isolate",
  0x2067: "right-to-left isolate",
  0x2068: "first strong isolate",
  0x2069: "pop directional isolate",
  0x3000: "ideographic space",
  0xfeff: "zero-width no-break space",
};

/**
 * One character as a person can read it in a sentence: a visible one between quotes (“é”), an invisible, control,
 * spacing or combining one by its code point and, when known, its name (U+00A0 no-break space).
 */
export function readableChar(ch: string): string {
  const cp = ch.codePointAt(0);
  if (cp === undefined) return "";
  const hex = `U+${cp.toString(16).toUpperCase().padStart(4, "0")}`;
  const name = CHAR_NAMES[cp];
  if (name) return `${hex} ${name}`;
  // Controls, format characters, unassigned/private/surrogates, separators other than the plain space, and marks
  // that would combine with the quote.
  if (/^[\p{C}\p{Z}\p{M}]/u.test(ch) && ch !== " ") return hex;
  return `“${ch}”`;
}
