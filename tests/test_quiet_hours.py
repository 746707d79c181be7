"""Quiet hours (server/quiet_hours.py) on fixed clocks: parsing, zones of numbers, and the next opening across
zones and DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from server.quiet_hours import MAX_STEPS, QuietHours, next_opening, valid_zone, zones_for_number

NIGHT = QuietHours(time(21, 0), time(8, 0))
NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def local(zone: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    """An aware UTC instant from a wall-clock time in `zone`."""
    return datetime(year, month, day, hour, minute, second, tzinfo=zone).astimezone(UTC)


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        ("21:00-08:00", time(21), time(8)),
        ("12:00-13:00", time(12), time(13)),
        (" 7:30 - 9:05 ", time(7, 30), time(9, 5)),
        ("00:00-23:59", time(0), time(23, 59)),
    ],
)
def test_parse(text: str, start: time, end: time) -> None:
    quiet = QuietHours.parse(text)
    assert (quiet.start, quiet.end) == (start, end)
    assert QuietHours.parse(str(quiet)) == quiet


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "HH:MM-HH:MM"),
        ("21:00", "HH:MM-HH:MM"),
        ("21-08", "HH:MM-HH:MM"),
        ("9pm-8am", "HH:MM-HH:MM"),
        ("21:00-08:00-09:00", "HH:MM-HH:MM"),
        ("21:0-08:00", "HH:MM-HH:MM"),
        ("24:00-08:00", "24:00 is not a time of day"),
        ("21:00-08:60", "08:60 is not a time of day"),
        ("08:00-08:00", "different times"),
        ("x" * 10_000, "HH:MM-HH:MM"),
    ],
)
def test_parse_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        QuietHours.parse(text)
    assert len(str(info.value)) < 200  # a long bad value is not quoted whole


def test_is_quiet_bounds() -> None:
    assert NIGHT.is_quiet(time(21, 0)) and NIGHT.is_quiet(time(2, 0)) and NIGHT.is_quiet(time(7, 59, 59))
    assert not NIGHT.is_quiet(time(8, 0)) and not NIGHT.is_quiet(time(20, 59, 59))
    lunch = QuietHours.parse("12:00-13:00")
    assert lunch.is_quiet(time(12, 0)) and lunch.is_quiet(time(12, 59))
    assert not lunch.is_quiet(time(13, 0)) and not lunch.is_quiet(time(11, 59)) and not lunch.is_quiet(time(0, 0))


def test_zones_for_number() -> None:
    assert zones_for_number("+12125550100") == ("America/New_York",)
    assert zones_for_number("+442079460000") == ("Europe/London",)
    assert set(zones_for_number("+17095550100")) == {"America/Halifax", "America/St_Johns"}
    assert zones_for_number("+4470") == ()  # libphonenumber's Etc/Unknown is dropped
    assert zones_for_number("not a number") == ()
    assert zones_for_number("+999123") == ()


def test_new_york_night() -> None:
    zones = zones_for_number("+12125550100")
    at = local(NEW_YORK, 2026, 1, 15, 2, 0)
    opening = next_opening(NIGHT, zones, at)
    assert opening == local(NEW_YORK, 2026, 1, 15, 8, 0)
    assert opening is not None and opening.tzinfo is UTC
    # Before midnight the opening is the next morning; in summer the offset is EDT's.
    assert next_opening(NIGHT, zones, local(NEW_YORK, 2026, 7, 3, 22, 15)) == local(NEW_YORK, 2026, 7, 4, 8, 0)
    assert next_opening(NIGHT, zones, local(NEW_YORK, 2026, 7, 4, 21, 0)) == local(NEW_YORK, 2026, 7, 5, 8, 0)


def test_outside_quiet_hours_sends_now() -> None:
    zones = zones_for_number("+12125550100")
    assert next_opening(NIGHT, zones, local(NEW_YORK, 2026, 1, 15, 8, 0)) is None
    assert next_opening(NIGHT, zones, local(NEW_YORK, 2026, 1, 15, 20, 59, 59)) is None
    # `at` may be in any zone: it is the instant that counts.
    assert next_opening(NIGHT, zones, datetime(2026, 1, 15, 12, 0, tzinfo=NEW_YORK)) is None


def test_window_not_spanning_midnight() -> None:
    lunch = QuietHours.parse("12:00-13:00")
    zones = ["Europe/Berlin"]
    berlin = ZoneInfo("Europe/Berlin")
    assert next_opening(lunch, zones, local(berlin, 2026, 5, 4, 12, 30)) == local(berlin, 2026, 5, 4, 13, 0)
    assert next_opening(lunch, zones, local(berlin, 2026, 5, 4, 13, 0)) is None
    assert next_opening(lunch, zones, local(berlin, 2026, 5, 4, 11, 59)) is None


def test_number_spanning_zones_gets_the_latest_opening() -> None:
    # +1 709: Newfoundland (St John's, UTC-2:30 in summer) and Labrador (Halifax, UTC-3).
    zones = zones_for_number("+17095550100")
    at = utc(2026, 6, 15, 10, 0)  # 07:30 in St John's, 07:00 in Halifax
    assert next_opening(NIGHT, zones, at) == local(ZoneInfo("America/Halifax"), 2026, 6, 15, 8, 0)  # 11:00 UTC


def test_new_york_and_los_angeles() -> None:
    los_angeles = ZoneInfo("America/Los_Angeles")
    zones = ["America/New_York", "America/Los_Angeles"]
    at = local(NEW_YORK, 2026, 1, 15, 8, 30)  # 05:30 in Los Angeles
    assert next_opening(NIGHT, zones, at) == local(los_angeles, 2026, 1, 15, 8, 0) == local(NEW_YORK, 2026, 1, 15, 11)
    # 19:00 in Los Angeles is 22:00 in New York: quiet there, so the most restrictive answer waits.
    evening = local(los_angeles, 2026, 1, 15, 19, 0)
    assert next_opening(NIGHT, zones, evening) == local(los_angeles, 2026, 1, 16, 8, 0)
    assert next_opening(NIGHT, zones, local(NEW_YORK, 2026, 1, 15, 12, 0)) is None


def test_steps_through_zones_entering_quiet_hours() -> None:
    # At 07:30 Tokyo it is 22:30 in London: Tokyo opens at 08:00, but London is quiet until 08:00 London, when
    # it is 16:00 in Tokyo: open in both.
    tokyo = ZoneInfo("Asia/Tokyo")
    zones = ["Asia/Tokyo", "Europe/London"]
    assert next_opening(NIGHT, zones, local(tokyo, 2026, 1, 15, 7, 30)) == local(LONDON, 2026, 1, 15, 8, 0)


def test_no_opening_ends_after_max_steps() -> None:
    # Quiet hours of 20 hours in zones 12 hours apart: never open in both at once. The call ends anyway.
    quiet = QuietHours.parse("10:00-06:00")
    at = utc(2026, 1, 15, 0, 0)
    zones = ["UTC", "Etc/GMT+12"]  # POSIX sign: Etc/GMT+12 is UTC-12
    opening = next_opening(quiet, zones, at)
    assert opening is not None and at < opening <= at + timedelta(days=MAX_STEPS)
    assert any(quiet.is_quiet(opening.astimezone(ZoneInfo(z)).time()) for z in zones)  # gave up, as documented


def test_dst_spring_forward_london() -> None:
    # 2026-03-29: at 01:00 GMT London's clocks go to 02:00 BST.
    zones = ["Europe/London"]
    # Before the change the night ends at 08:00 BST = 07:00 UTC, not 08:00 UTC.
    assert next_opening(NIGHT, zones, utc(2026, 3, 28, 23, 0)) == utc(2026, 3, 29, 7, 0)
    assert next_opening(NIGHT, zones, utc(2026, 3, 29, 1, 30)) == utc(2026, 3, 29, 7, 0)  # 02:30 BST
    # An end the clocks skip (01:30 does not exist that day): the first instant after it, the jump itself.
    early = QuietHours.parse("00:00-01:30")
    assert next_opening(early, zones, utc(2026, 3, 29, 0, 45)) == utc(2026, 3, 29, 1, 0)
    assert next_opening(early, zones, utc(2026, 3, 29, 1, 0)) is None


def test_dst_fall_back_london() -> None:
    # 2026-10-25: at 02:00 BST (01:00 UTC) London's clocks go back to 01:00 GMT; 01:00-02:00 happens twice.
    zones = ["Europe/London"]
    quiet = QuietHours.parse("23:00-01:30")
    # In the first pass the quiet hours end at the first 01:30 (BST)...
    assert next_opening(quiet, zones, utc(2026, 10, 24, 23, 30)) == utc(2026, 10, 25, 0, 30)
    # ...and the repeated 01:00-01:30 (GMT) is quiet again, until the second 01:30.
    assert next_opening(quiet, zones, utc(2026, 10, 25, 1, 10)) == utc(2026, 10, 25, 1, 30)
    assert next_opening(NIGHT, zones, utc(2026, 10, 25, 3, 0)) == utc(2026, 10, 25, 8, 0)  # 08:00 GMT


def test_zone_names() -> None:
    assert valid_zone("America/New_York") and valid_zone("UTC")
    for bad in ("Mars/Olympus_Mons", "", "America", "../etc/passwd", "Etc/Unknown", "x" * 5000):
        assert not valid_zone(bad), bad
    with pytest.raises(ValueError, match="unknown time zone"):
        next_opening(NIGHT, ["America/New_York", "Mars/Olympus_Mons"], utc(2026, 1, 15, 12, 0))


def test_no_zones_constrain_nothing_and_naive_times_are_refused() -> None:
    assert next_opening(NIGHT, [], utc(2026, 1, 15, 3, 0)) is None
    # The documented fallback for a number without zones: UTC.
    assert next_opening(NIGHT, zones_for_number("+4470") or ("UTC",), utc(2026, 1, 15, 3, 0)) == utc(2026, 1, 15, 8)
    with pytest.raises(ValueError, match="timezone-aware"):
        next_opening(NIGHT, ["UTC"], datetime(2026, 1, 15, 3, 0))
