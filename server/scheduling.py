"""When an outbound message goes: now, at the time the caller asked for, or when the contact's quiet hours end."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta

from server.config import Config
from server.documents import ConversationDoc
from server.errors import InvalidArgument
from server.quiet_hours import QuietHours, next_opening, zones_for_number
from server.reasons import Reason

# Why a stored message waits as SCHEDULED (MessageDoc.schedule_reason).
REQUESTED = "requested"
QUIET_HOURS = "quiet_hours"
# A number whose zones libphonenumber does not know gets quiet hours in UTC: no better guess exists.
FALLBACK_ZONES = ("UTC",)


@dataclass(frozen=True)
class Plan:
    """A message's send time (None: now) and why it waits."""

    send_at: datetime | None
    reason: str = ""


def check_send_at(cfg: Config, send_at: datetime, at: datetime) -> None:
    """A send-later time is in the future and at most SMS_SCHEDULE_MAX_DAYS ahead; INVALID_ARGUMENT otherwise."""
    if send_at <= at:
        raise InvalidArgument("send_at", "must be in the future", Reason.INVALID_SEND_TIME)
    if send_at > at + timedelta(days=cfg.schedule_max_days):
        raise InvalidArgument(
            "send_at", f"must be at most {cfg.schedule_max_days} days ahead", Reason.INVALID_SEND_TIME
        )


@functools.cache
def _quiet_hours(text: str) -> QuietHours:
    return QuietHours.parse(text)  # validated when the configuration was read


def contact_zones(conv: ConversationDoc) -> tuple[str, ...]:
    """The zones quiet hours are kept in: the conversation's own, else every zone of the contact's number."""
    own = conv.get("time_zone")
    if own:
        return (own,)
    return zones_for_number(conv["contact_number"]) or FALLBACK_ZONES


def plan(cfg: Config, conv: ConversationDoc, send_at: datetime | None, ignore_quiet_hours: bool, at: datetime) -> Plan:
    """When a message asked for at `at` (or for `send_at`) goes.

    During the contact's quiet hours (in every zone of their number: the most restrictive) it waits for the next
    opening, also when the caller chose a time that falls in them; `ignore_quiet_hours` (checked by the caller)
    sends anyway.
    """
    if cfg.quiet_hours and not ignore_quiet_hours:
        opening = next_opening(_quiet_hours(cfg.quiet_hours), contact_zones(conv), send_at or at)
        if opening is not None:
            return Plan(opening.replace(microsecond=opening.microsecond // 1000 * 1000), QUIET_HOURS)
    if send_at is not None:
        return Plan(send_at, REQUESTED)
    return Plan(None)
