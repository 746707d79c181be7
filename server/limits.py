"""Every bound on what callers send, in one place: the numbers and the checks that enforce them.

Strings are measured in UTF-8 bytes, except Send's body, which is measured in characters as Twilio measures
it. A value over its bound is INVALID_ARGUMENT naming the field (ErrorInfo reason INPUT_TOO_LARGE, or
INVALID_TIMESTAMP for a time out of range), and the message never quotes more than a short prefix of it.

The bounds also bound what is derived from input: one event (EVENT_BYTES), hence the event log in bytes
(SMS_EVENT_RETENTION events of at most EVENT_BYTES) and each subscriber's queue (SMS_SUBSCRIBER_QUEUE_BYTES,
whose smallest allowed value holds one largest event). The README's "Limits" section lists them; each is also
a comment on its field in protos/sms/v1/.
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from server.errors import InvalidArgument
from server.reasons import Reason

KIB = 1024

# Ids we issue (messages: 24 hex digits; conversations: 25 characters) and Twilio's sids (34 characters).
ID_BYTES = 64
# A phone number as given, or a Twilio address (E.164, short code, sender id, "whatsapp:+1…").
ADDRESS_BYTES = 128
# A user id: a token's subject, stored as the owner of what the user starts.
USER_ID_BYTES = 128
# Send's body, in characters: Twilio refuses a longer message.
BODY_CHARS = 1600
# An inbound body: Twilio delivers at most 1600 characters, which take at most 6,400 bytes.
INBOUND_BODY_BYTES = 8 * KIB
# Attachments: Twilio sends and accepts at most 10 per message.
MEDIA_COUNT = 10
# One media URL (room for pre-signed URLs).
URL_BYTES = 2 * KIB
# One media content type (RFC 6838: type and subtype of at most 127 characters each).
CONTENT_TYPE_BYTES = 255
CONTACT_ID_BYTES = 256
# UpdateConversation: the contact's name; labels, how many and each; the update_mask's paths, how many and each.
CONTACT_NAME_BYTES = 256
LABELS_COUNT = 20
LABEL_BYTES = 64
MASK_PATHS_COUNT = 10
MASK_PATH_BYTES = 64
# A conversation's IANA time zone (the longest names are about 30 bytes).
TIME_ZONE_BYTES = 64
# AddNote's body: an internal note, never an SMS.
NOTE_BODY_BYTES = 4 * KIB
REQUEST_ID_BYTES = 200
# Twilio's MessageStatus values; the longest is "partially_delivered".
STATUS_BYTES = 32
ERROR_MESSAGE_BYTES = 1 * KIB
# One webhook post, as the bridge reads it (form-encoded: what it decodes to is no larger).
FORM_BYTES = 64 * KIB
# Twilio's other webhook parameters: how many, each key, and all keys and values together (so each value too):
# as much as one post can carry.
PARAMS_COUNT = 200
PARAM_KEY_BYTES = 128
PARAMS_BYTES = FORM_BYTES
# Our page tokens take under 100 bytes; resume tokens (Redis stream ids) at most 41.
PAGE_TOKEN_BYTES = 512
# ListConversations' filter (server/filters.py) and the free-text queries of ListConversations and SearchMessages.
FILTER_BYTES = 512
QUERY_BYTES = 256
RESUME_TOKEN_BYTES = 64
# Times: from the Unix epoch to the end of year 9999, which Python, BSON dates and protobuf all represent.
TIME_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
TIME_MIN_MS = 0
TIME_MAX_MS = int(TIME_MAX.timestamp()) * 1000 + 999

# Derived: the largest event the bounds above allow is smaller than this (tests/test_bounds.py builds it), and
# the smallest SMS_SUBSCRIBER_QUEUE_BYTES holds it. EventLog refuses a larger one (readers resync instead).
EVENT_BYTES = 64 * KIB

# How much of a caller's value an error message may quote.
QUOTE_CHARS = 32

_TIME_MIN_S = int(TIME_MIN.timestamp())
_TIME_MAX_S = int(TIME_MAX.timestamp())


def quote(value: str, limit: int = QUOTE_CHARS) -> str:
    """`value` for an error message: its repr, cut to a short prefix so that no message echoes unbounded input."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value)} characters)"


def cut(value: str, max_bytes: int) -> str:
    """`value` cut to at most `max_bytes` of UTF-8, on a character boundary: for text we keep, not refuse."""
    if utf8_len(value) <= max_bytes:
        return value
    return value.encode("utf-8", "surrogatepass")[:max_bytes].decode("utf-8", "ignore")


def utf8_len(value: str) -> int:
    """The length of `value` in UTF-8 (without a copy when it is ASCII)."""
    return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))


def _too_large(field: str, what: str) -> InvalidArgument:
    return InvalidArgument(field, what, Reason.INPUT_TOO_LARGE)


def text(field: str, value: str, max_bytes: int) -> str:
    """`value` when it takes at most `max_bytes` in UTF-8; INVALID_ARGUMENT naming `field` otherwise."""
    n = len(value)
    # n characters take n to 4n bytes: only in between are the bytes counted, a copy of bounded size.
    if n > max_bytes or (4 * n > max_bytes and utf8_len(value) > max_bytes):
        raise _too_large(field, f"at most {max_bytes} bytes (UTF-8)")
    return value


def ident(field: str, value: str) -> str:
    """An id field (ours or Twilio's sids) within ID_BYTES."""
    return text(field, value, ID_BYTES)


def chars(field: str, value: str, max_chars: int) -> str:
    """`value` when it has at most `max_chars` characters; INVALID_ARGUMENT naming `field` otherwise."""
    if len(value) > max_chars:
        raise _too_large(field, f"at most {max_chars} characters, got {len(value)}")
    return value


def count(field: str, values: Sized, max_items: int, what: str = "items") -> None:
    """INVALID_ARGUMENT naming `field` when it holds more than `max_items` entries."""
    if len(values) > max_items:
        raise _too_large(field, f"at most {max_items} {what}, got {len(values)}")


def each(field: str, values: list[str], max_items: int, max_bytes: int) -> None:
    """A repeated string field: at most `max_items` entries of at most `max_bytes` each."""
    count(field, values, max_items)
    for i, value in enumerate(values):
        text(f"{field}[{i}]", value, max_bytes)


def params(field: str, values: Mapping[str, str]) -> None:
    """Twilio's other webhook parameters: at most PARAMS_COUNT, keys of PARAM_KEY_BYTES, PARAMS_BYTES in all."""
    count(field, values, PARAMS_COUNT, "parameters")
    total = 0
    for key, value in values.items():
        # Each value is checked alone first, so that no oversized one is copied to be measured.
        total += utf8_len(text(field, key, PARAM_KEY_BYTES)) + utf8_len(text(field, value, PARAMS_BYTES))
        if total > PARAMS_BYTES:
            raise _too_large(field, f"names and values take at most {PARAMS_BYTES} bytes (UTF-8) together")


def timestamp(field: str, ts: Timestamp) -> datetime:
    """The UTC time `ts` names, when it is well formed and between TIME_MIN and TIME_MAX.

    INVALID_ARGUMENT naming `field` otherwise: the shared check of every timestamp a caller sends.
    """
    if not (_TIME_MIN_S <= ts.seconds <= _TIME_MAX_S and 0 <= ts.nanos <= 999_999_999):
        raise InvalidArgument(
            field, f"must be a time from {TIME_MIN:%Y-%m-%d} to {TIME_MAX:%Y-%m-%d} (UTC)", Reason.INVALID_TIMESTAMP
        )
    return ts.ToDatetime(tzinfo=UTC)


# Templates (canned replies, server/templates.py). The display name, in bytes; the body, in characters like Send's
# body (a template is sent as one); ListTemplates' query; how many templates each user and the shared set may hold.
TEMPLATE_NAME_BYTES = 64
TEMPLATE_BODY_CHARS = BODY_CHARS
TEMPLATE_QUERY_BYTES = 64
TEMPLATES_PER_USER = 200
SHARED_TEMPLATES = 500
