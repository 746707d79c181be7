"""Quiet hours in the contact's local time: when a message may go, for a number that may span several zones.

Pure: no I/O beyond the tz database that `zoneinfo` reads (cached by ZoneInfo itself).

A number's zones come from libphonenumber (`zones_for_number`). When none is known the result is empty and the
caller decides the fallback: the gateway uses UTC (`next_opening(quiet, zones or ("UTC",), at)`), since an
unknown zone gives no better guess. A number spanning several zones gets the most restrictive answer: it may be
messaged only when it is outside quiet hours in every one of them.

Note that a non-geographic NANP number (toll free, +1 500…) maps to some forty zones from Guam to Newfoundland;
with long quiet hours their union can cover the whole day, and `next_opening` then gives up after
`MAX_STEPS` steps and returns the time it reached (still quiet somewhere).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_timezone

# libphonenumber's answer for a number it cannot place.
UNKNOWN_ZONE = "Etc/Unknown"
# Each step jumps to the end of a quiet period; zones whose quiet hours cover the whole day together would
# otherwise loop for ever.
MAX_STEPS = 50
# How much of a bad value an error message quotes (the text may come from a caller).
_QUOTE_CHARS = 32

_WINDOW = re.compile(r"\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*")


def _quote(text: str) -> str:
    return repr(text if len(text) <= _QUOTE_CHARS else text[:_QUOTE_CHARS] + "…")


@dataclass(frozen=True)
class QuietHours:
    """A daily window of local wall-clock time in which no message goes: `start` inclusive, `end` exclusive.

    When `end` is earlier than `start` the window spans midnight (21:00-08:00).
    """

    start: time
    end: time

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("quiet hours are wall-clock times: start and end must not carry a time zone")
        if self.start == self.end:
            # Empty or the whole day: either way almost certainly a mistake in the configuration.
            raise ValueError(f"quiet hours must start and end at different times (both {self.start:%H:%M})")

    @classmethod
    def parse(cls, text: str) -> QuietHours:
        """Reads "HH:MM-HH:MM" (24-hour clock, e.g. "21:00-08:00"); ValueError saying what is wrong otherwise."""
        m = _WINDOW.fullmatch(text)
        if m is None:
            raise ValueError(f'quiet hours must look like "21:00-08:00" (HH:MM-HH:MM), not {_quote(text)}')
        sh, sm, eh, em = (int(g) for g in m.groups())
        for hour, minute in ((sh, sm), (eh, em)):
            if not (0 <= hour <= 23 and 0 <= minute <= 59):
                raise ValueError(f"quiet hours: {hour:02d}:{minute:02d} is not a time of day (00:00 to 23:59)")
        return cls(time(sh, sm), time(eh, em))

    def is_quiet(self, local: time) -> bool:
        """Whether the wall-clock time `local` falls in the window (a tzinfo on `local` is ignored)."""
        t = local.replace(tzinfo=None)
        if self.start < self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


def valid_zone(name: str) -> bool:
    """Whether `name` is an IANA zone this machine's tz database knows."""
    try:
        _zone(name)
    except ValueError:
        return False
    return True


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    # ValueError: malformed keys ("", "../x"); OSError: a directory ("America") or an over-long name.
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"unknown time zone {_quote(name)}") from exc


def zones_for_number(e164: str) -> tuple[str, ...]:
    """The IANA zones libphonenumber places `e164` in; empty when it cannot (or the text is no number)."""
    try:
        number = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return ()
    zones: Sequence[str] = phone_timezone.time_zones_for_number(number)
    return tuple(z for z in zones if z != UNKNOWN_ZONE)


def next_opening(quiet: QuietHours, zones: Sequence[str], at: datetime) -> datetime | None:
    """None when `at` is outside quiet hours in every zone (send now); otherwise the earliest moment after `at`
    at which it is outside quiet hours in ALL zones, as an aware UTC datetime.

    `at` must be timezone-aware (any zone; it is read as the instant it names). `zones` empty means no zone
    constrains the send (the caller passes ("UTC",) when it knows none: see the module's docstring). An unknown
    zone name is a ValueError. After MAX_STEPS jumps without an opening (zones that are quiet around the clock
    between them) the instant reached is returned, so the call always ends.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("next_opening needs a timezone-aware `at`")
    tzs = [_zone(z) for z in zones]
    start = at.astimezone(UTC)
    t = start
    for _ in range(MAX_STEPS):
        ends = [_end_of_quiet(quiet, tz, t) for tz in tzs if quiet.is_quiet(t.astimezone(tz).time())]
        if not ends:
            return None if t == start else t
        # Every zone quiet at t stays quiet until its own end; the latest end is the earliest possible opening,
        # but by then another zone may have entered its quiet hours, hence the loop.
        t = max(ends)
    return t


def _end_of_quiet(quiet: QuietHours, tz: ZoneInfo, t: datetime) -> datetime:
    """The first instant after `t` (UTC, quiet in `tz`) at which `tz`'s wall clock reaches `quiet.end`."""
    local_day = t.astimezone(tz).date()
    # The end is on the local day or the next; the day before covers a repeated hour that `t` is in the second
    # pass of, and the day after next a zone that skips a whole day (Pacific/Apia, 2011).
    candidates = (
        instant
        for offset in (-1, 0, 1, 2)
        for instant in _instants(local_day + timedelta(days=offset), quiet.end, tz)
        if instant > t
    )
    return min(candidates)


def _instants(day: date, wall: time, tz: ZoneInfo) -> list[datetime]:
    """The UTC instants at which `tz`'s clock shows `wall` on `day`: one, two in a repeated hour (clocks going
    back), or, when the clocks skip it (going forward), the instant they jump past it."""
    naive = datetime.combine(day, wall)
    shown: list[datetime] = []
    for fold in (0, 1):
        instant = naive.replace(fold=fold, tzinfo=tz).astimezone(UTC)
        if instant.astimezone(tz).replace(tzinfo=None, fold=0) == naive and instant not in shown:
            shown.append(instant)
    if shown:
        return shown
    return [_first_at_or_after(naive, tz)]


def _first_at_or_after(naive: datetime, tz: ZoneInfo) -> datetime:
    """The first instant at which `tz`'s clock shows `naive` or later, for a `naive` the clock skips.

    In a gap, fold=1 reads `naive` with the offset after the jump (an instant before it) and fold=0 with the
    offset before (an instant after it); the clock is monotonic in between, so a bisection finds the jump.
    """
    lo = naive.replace(fold=1, tzinfo=tz).astimezone(UTC)  # the clock shows less than `naive`
    hi = naive.replace(fold=0, tzinfo=tz).astimezone(UTC)  # the clock shows more than `naive`
    if hi <= lo:  # not a gap after all (cannot happen with real data); take the later reading
        return max(lo, hi)
    step = timedelta(microseconds=1)
    while hi - lo > step:
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).replace(tzinfo=None) >= naive:
            hi = mid
        else:
            lo = mid
    return hi
