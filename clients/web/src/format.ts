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
