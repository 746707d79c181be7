"""Times as MongoDB keeps them: UTC, millisecond precision."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp


def now() -> datetime:
    """The current UTC time, truncated to what MongoDB stores, so reads compare equal to writes."""
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond // 1000 * 1000)


def aware(t: datetime) -> datetime:
    """PyMongo returns naive UTC datetimes unless told otherwise; make them aware."""
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def to_ms(t: datetime) -> int:
    return int(aware(t).timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def to_timestamp(t: datetime | None) -> Timestamp | None:
    if t is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(aware(t))
    return ts
