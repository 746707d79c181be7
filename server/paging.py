"""AIP-158 paging: page sizes and opaque keyset page tokens."""

from __future__ import annotations

import base64
import json
from datetime import datetime

from bson import ObjectId

from server import limits
from server.documents import message_oid
from server.errors import InvalidArgument
from server.reasons import Reason
from server.timeutil import from_ms, to_ms

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def page_size(requested: int) -> int:
    """0 means the default; above the maximum is capped; negative is INVALID_ARGUMENT."""
    if requested < 0:
        raise InvalidArgument("page_size", "must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(kind: str, t: datetime, key: str) -> str:
    """An opaque token for the position after (t, key) in a list of `kind`."""
    raw = json.dumps([kind, to_ms(t), key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(kind: str, token: str) -> tuple[datetime, str] | None:
    """The position a token names; None for an empty token; INVALID_ARGUMENT when malformed or out of range.

    Tokens carry only a position: every query still filters by the caller, so a token never grants access.
    """
    if not limits.text("page_token", token, limits.PAGE_TOKEN_BYTES):
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        k, ms, key = json.loads(raw)
    except (ValueError, TypeError, RecursionError):  # json.JSONDecodeError and binascii.Error are ValueErrors
        k = ms = key = None
    # A time outside what a datetime holds is as malformed as garbage (from_ms would raise OSError).
    in_range = isinstance(ms, int) and limits.TIME_MIN_MS <= ms <= limits.TIME_MAX_MS
    # A kind may carry a scope after a colon (the filter and query a list was read with): a token of the same
    # list under another scope would continue a different list.
    if isinstance(k, str) and k != kind and k.split(":")[0] == kind.split(":")[0] and in_range:
        raise InvalidArgument(
            "page_token", "this page token belongs to a different filter or query", Reason.INVALID_PAGE_TOKEN
        )
    if k != kind or not in_range or not isinstance(key, str):
        raise InvalidArgument("page_token", "malformed page token", Reason.INVALID_PAGE_TOKEN)
    return from_ms(ms), key


def decode_message_token(kind: str, token: str) -> tuple[datetime, ObjectId] | None:
    """`decode_token` for lists of messages, whose positions end in a message's ObjectId."""
    position = decode_token(kind, token)
    if position is None:
        return None
    oid = message_oid(position[1])
    if oid is None:
        raise InvalidArgument("page_token", "malformed page token", Reason.INVALID_PAGE_TOKEN)
    return position[0], oid
