"""Message status ranks: the one rule that decides whether a status change moves a message."""

from __future__ import annotations

from sms.v1 import types_pb2

from server.errors import InvalidArgument
from server.limits import quote
from server.reasons import Reason

# Twilio's status values, as stored in MongoDB.
QUEUED, SENDING, SENT = "queued", "sending", "sent"
DELIVERED, UNDELIVERED, FAILED, READ = "delivered", "undelivered", "failed", "read"
RECEIVED = "received"
SCHEDULED, CANCELED = "scheduled", "canceled"
# What CancelMessage may still stop: the worker has not begun an attempt.
CANCELABLE = frozenset({SCHEDULED, QUEUED})
# What the worker may begin an attempt from: waiting, or SENDING again after a try that did not reach Twilio.
ATTEMPTABLE = frozenset({SCHEDULED, QUEUED, SENDING})

_RANK = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 0,
    "receiving": 0,
    "sending": 1,
    "sent": 2,
    # Terminal: the first one wins; only `read` may follow.
    "delivered": 3,
    "undelivered": 3,
    "failed": 3,
    "canceled": 3,
    "received": 3,
    "partially_delivered": 3,
    "read": 4,
}
TERMINAL = frozenset(s for s, r in _RANK.items() if r == 3)
FAILURES = frozenset({UNDELIVERED, FAILED})

_TO_PROTO = {name: types_pb2.MessageStatus.Value(f"MESSAGE_STATUS_{name.upper()}") for name in _RANK}


def parse_status(raw: str, field: str = "message_status") -> str:
    """Twilio's status string normalised; InvalidArgument for a value Twilio does not define."""
    status = raw.strip().lower()
    if status not in _RANK:
        raise InvalidArgument(field, f"unknown message status {quote(raw)}", Reason.UNKNOWN_STATUS)
    return status


def moves(current: str, new: str) -> bool:
    """Whether `new` may replace `current`: strictly higher rank only, so terminal states stick."""
    return _RANK[new] > _RANK[current]


def to_proto(status: str) -> types_pb2.MessageStatus.ValueType:
    return _TO_PROTO.get(status, types_pb2.MESSAGE_STATUS_UNSPECIFIED)
