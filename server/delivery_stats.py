"""Delivery counters in Redis, kept as messages change, for GetDeliveryStats and GetQueueStats.

Counting from MongoDB costs what the stored history costs; these counters cost what the asked window costs. Each
event adds one to a field of a per-minute hash and of a per-hour hash:

    {prefix}m:{minute}   minute = whole minutes since the Unix epoch (UTC); kept 3 days after its minute
    {prefix}h:{hour}     hour = whole hours since the Unix epoch (UTC); kept 40 days after its hour

    fields:  queued | sent | delivered | undelivered | failed | canceled   one per event
             err:<code>                                                     failed/undelivered with Twilio's code
             lat:<i>                                                        delivered after a latency in bucket i

Latencies (Send to delivered) go into a log-scale histogram: bucket 0 holds up to 0.1 s, bucket i (i >= 1) holds
(0.1 * 1.25**(i-1), 0.1 * 1.25**i] seconds, and the last one everything beyond about two days; a percentile is
read as the geometric middle of its bucket, within one bucket (25%) of the truth.

The prefix is per stack (`stats_prefix`: the arq queue's name), so stacks sharing one Redis count apart.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from server.config import Config
from server.errors import InvalidArgument
from server.twilio_errors import description

log = logging.getLogger(__name__)

QUEUED, SENT, DELIVERED, UNDELIVERED, FAILED, CANCELED = (
    "queued",
    "sent",
    "delivered",
    "undelivered",
    "failed",
    "canceled",
)
# The events counted, in the order of DeliveryBucket's fields.
EVENTS: Final = (QUEUED, SENT, DELIVERED, UNDELIVERED, FAILED, CANCELED)
# Events that carry Twilio's error code.
ERROR_EVENTS: Final = frozenset({UNDELIVERED, FAILED})

MINUTE: Final = timedelta(minutes=1)
HOUR: Final = timedelta(hours=1)
# How long each hash is kept after its own minute or hour: sub-hour buckets reach back 3 days, hour buckets 40.
MINUTE_RETENTION: Final = timedelta(days=3)
HOUR_RETENTION: Final = timedelta(days=40)

# GetDeliveryStats' bounds (sms.proto, GetDeliveryStatsRequest).
DEFAULT_WINDOW: Final = timedelta(hours=24)
MIN_WINDOW: Final = timedelta(minutes=1)
MAX_WINDOW: Final = timedelta(days=35)
MAX_BUCKETS: Final = 1440
DEFAULT_BUCKETS: Final = 24
TOP_ERRORS: Final = 10

# The latency histogram: bucket i's upper bound is LATENCY_BASE * LATENCY_GROWTH**i seconds.
LATENCY_BASE: Final = 0.1
LATENCY_GROWTH: Final = 1.25
# 0.1 s * 1.25**65 is about 2.1 days; later deliveries share the last bucket.
LATENCY_BUCKETS: Final = 66

# A count waits this long at most for Redis: the caller's write is done and must not hang on a sick Redis.
RECORD_TIMEOUT_SECONDS: Final = 1.0
# Events per pipeline in record_many.
BULK_BATCH: Final = 5000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def stats_prefix(cfg: Config) -> str:
    """The counters' key prefix of a stack: beside its arq queue, so stacks sharing a Redis count apart."""
    return f"{cfg.arq_queue}:stats:"


def latency_bucket(latency: timedelta) -> int:
    """The histogram bucket of a latency (see the module docstring)."""
    seconds = latency.total_seconds()
    if seconds <= LATENCY_BASE:
        return 0
    i = math.ceil(math.log(seconds / LATENCY_BASE, LATENCY_GROWTH) - 1e-9)
    return min(max(i, 1), LATENCY_BUCKETS - 1)


def bucket_value(i: int) -> timedelta:
    """The latency a bucket stands for: the geometric middle of its bounds (its upper bound for bucket 0)."""
    if i <= 0:
        return timedelta(seconds=LATENCY_BASE)
    upper = LATENCY_BASE * LATENCY_GROWTH**i
    return timedelta(seconds=upper / math.sqrt(LATENCY_GROWTH))


def percentiles(histogram: dict[int, int], qs: Sequence[float]) -> list[timedelta | None]:
    """The q-quantiles (0..1, ascending) of a latency histogram by nearest rank; None for each when it is empty."""
    total = sum(histogram.values())
    if total <= 0:
        return [None for _ in qs]
    out: list[timedelta | None] = []
    ordered = sorted(histogram.items())
    k, seen = 0, ordered[0][1]
    for q in qs:
        rank = max(1, math.ceil(q * total))
        while seen < rank and k + 1 < len(ordered):
            k += 1
            seen += ordered[k][1]
        out.append(bucket_value(ordered[k][0]))
    return out


def percentile(histogram: dict[int, int], q: float) -> timedelta | None:
    """The q-quantile (0..1) of a latency histogram by nearest rank; None when it is empty."""
    return percentiles(histogram, (q,))[0]


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _minute_of(at: datetime) -> int:
    return int((_aware(at) - _EPOCH) // MINUTE)


def _hour_of(at: datetime) -> int:
    return int((_aware(at) - _EPOCH) // HOUR)


@dataclass(frozen=True)
class StatEvent:
    """One event to count: what happened to an outbound message, when, and its error code or latency."""

    event: str
    at: datetime
    error_code: int = 0
    latency: timedelta | None = None


@dataclass
class Counts:
    """What one time bucket (or the whole window) holds: event counts, error codes, the latency histogram."""

    events: dict[str, int] = field(default_factory=dict)
    errors: dict[int, int] = field(default_factory=dict)
    latencies: dict[int, int] = field(default_factory=dict)

    def add_hash(self, raw: dict[Any, Any]) -> None:
        """Adds one stored hash (bytes or str fields) to these counts; fields it does not know are skipped.

        The hot loop of a read (up to 1,440 hashes of ~80 fields): one cached lookup per field, no parsing.
        """
        targets: tuple[dict[Any, int], ...] = (self.events, self.errors, self.latencies)
        for key, value in raw.items():
            meaning = _FIELDS.get(key)
            if meaning is None:
                meaning = _field_meaning(key)
            if meaning is _UNKNOWN:
                continue
            target = targets[meaning[0]]
            name = meaning[1]
            target[name] = target.get(name, 0) + int(value)

    def add(self, other: Counts) -> None:
        """Adds another bucket's counts to these."""
        for name, n in other.events.items():
            self.events[name] = self.events.get(name, 0) + n
        for code, n in other.errors.items():
            self.errors[code] = self.errors.get(code, 0) + n
        for i, n in other.latencies.items():
            self.latencies[i] = self.latencies.get(i, 0) + n

    def count(self, event: str) -> int:
        return self.events.get(event, 0)


# What a stored field counts, parsed once per distinct name: (0, event), (1, error code) or (2, latency bucket).
_FIELDS: dict[Any, tuple[int, str | int]] = {}
_UNKNOWN: tuple[int, str | int] = (-1, "")
# Bounds the cache should a foreign writer fill the hashes with other names.
_FIELDS_MAX = 4096


def _field_meaning(key: bytes | str) -> tuple[int, str | int]:
    """Parses a stored field name (`_FIELDS` caches the answer)."""
    name = key.decode(errors="replace") if isinstance(key, bytes) else str(key)
    kind, _, rest = name.partition(":")
    meaning = _UNKNOWN
    if name in EVENTS:
        meaning = (0, name)
    elif kind in ("err", "lat") and rest.isdigit():
        meaning = (1 if kind == "err" else 2, int(rest))
    if len(_FIELDS) < _FIELDS_MAX:
        _FIELDS[key] = meaning
    return meaning


@dataclass(frozen=True)
class BucketStats:
    """One time bucket of a read: its start, its counts and the percentiles of its latencies."""

    start: datetime
    counts: Counts
    p50: timedelta | None
    p95: timedelta | None


@dataclass(frozen=True)
class ErrorCount:
    code: int
    description: str
    count: int


@dataclass(frozen=True)
class Result:
    """A read of the counters: every bucket of the window (oldest first), the window's totals and top errors."""

    start: datetime
    bucket: timedelta
    buckets: list[BucketStats]
    total: Counts
    p50: timedelta | None
    p95: timedelta | None
    top_errors: list[ErrorCount]


@dataclass(frozen=True)
class Recent:
    """GetQueueStats' recent counts (see DeliveryStats.recent)."""

    sent_last_minute: int
    sent_last_hour: int
    failed_last_hour: int


def resolve(window: timedelta | None, bucket: timedelta | None) -> tuple[timedelta, timedelta]:
    """The window and bucket width of a GetDeliveryStats request, defaults applied; InvalidArgument naming the field.

    Unset (None) or zero means the default, as proto3 cannot tell an explicit zero Duration from an absent one
    for a client that always sets the field.
    """
    if window is None or window == timedelta(0):
        window = DEFAULT_WINDOW
    if window < MIN_WINDOW or window > MAX_WINDOW:
        raise InvalidArgument("window", "must be from 1 minute to 35 days")
    if bucket is None or bucket == timedelta(0):
        minutes = max(1, round(window / MINUTE / DEFAULT_BUCKETS))
        if minutes >= 60:
            # An hour or more is read from the hour hashes, so it is whole hours.
            minutes = round(minutes / 60) * 60
        bucket = timedelta(minutes=minutes)
    if bucket <= timedelta(0):
        raise InvalidArgument("bucket", "must be positive")
    if bucket % MINUTE:
        raise InvalidArgument("bucket", "must be a whole number of minutes")
    if bucket >= HOUR and bucket % HOUR:
        raise InvalidArgument("bucket", "a bucket of an hour or more must be a whole number of hours")
    if math.ceil(window / bucket) > MAX_BUCKETS:
        raise InvalidArgument("bucket", f"at most {MAX_BUCKETS} buckets fit in the window; use a wider bucket")
    return window, bucket


class DeliveryStats:
    """Counts delivery events in Redis and reads them back per time bucket (see the module docstring).

    Counting is best effort by design: `record` runs after the message's store write and swallows Redis errors,
    so a crash (or a Redis outage) between the write and the count loses a count, never a message, and the
    caller's write is never failed by it nor slowed by more than one bounded round trip.
    """

    def __init__(self, redis: Redis, key_prefix: str) -> None:
        self.redis = redis
        self.prefix = key_prefix

    def minute_key(self, minute: int) -> str:
        return f"{self.prefix}m:{minute}"

    def hour_key(self, hour: int) -> str:
        return f"{self.prefix}h:{hour}"

    # Writing

    async def record(self, event: str, at: datetime, *, error_code: int = 0, latency: timedelta | None = None) -> None:
        """Counts one event at `at`: one pipelined round trip (no MULTI), errors logged and swallowed.

        `event` is a message status; the ones not counted (sending, read, ...) are ignored, so a status writer may
        pass every applied change. `error_code` counts for failed and undelivered; `latency` (Send to delivered)
        for delivered. A crash between the caller's store write and this count loses the count, never a message.
        """
        if event not in EVENTS:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                self._queue(pipe, StatEvent(event, at, error_code, latency))
                await asyncio.wait_for(pipe.execute(), RECORD_TIMEOUT_SECONDS)
        except (RedisError, OSError, TimeoutError) as exc:
            # Only the event's name and the error's type: never a message's content or number.
            log.warning("delivery stats: a %s event was not counted (%s)", event, type(exc).__name__)

    async def record_many(self, events: Iterable[StatEvent], batch: int = BULK_BATCH) -> int:
        """Counts many events, `batch` per pipelined round trip (seeding, backfills); returns how many counted.

        Unlike `record`, a Redis error is raised: the caller of a bulk load wants to know it stopped.
        """
        counted = 0
        # Each key's expiry once per batch rather than once per event.
        expiries: dict[str, int] = {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for ev in events:
                if ev.event not in EVENTS:
                    continue
                expiries.update(self._queue(pipe, ev, expire=False))
                counted += 1
                if counted % batch == 0:
                    await self._flush(pipe, expiries)
            if expiries:
                await self._flush(pipe, expiries)
        return counted

    @staticmethod
    async def _flush(pipe: Pipeline, expiries: dict[str, int]) -> None:
        for key, deadline in expiries.items():
            pipe.expireat(key, deadline)
        expiries.clear()
        await pipe.execute()

    def _queue(self, pipe: Pipeline, ev: StatEvent, *, expire: bool = True) -> dict[str, int]:
        """Queues the HINCRBYs (and, with `expire`, EXPIREATs) of one event; returns its keys' expiry times.

        A hash expires a retention after its own minute or hour (EXPIREAT, not EXPIRE): an event counted late,
        or a backfill, leaves with its time, and one older than the retention is not kept at all.
        """
        minute, hour = _minute_of(ev.at), _hour_of(ev.at)
        fields = [ev.event]
        if ev.event in ERROR_EVENTS and ev.error_code:
            fields.append(f"err:{ev.error_code}")
        if ev.event == DELIVERED and ev.latency is not None:
            fields.append(f"lat:{latency_bucket(max(ev.latency, timedelta(0)))}")
        mkey, hkey = self.minute_key(minute), self.hour_key(hour)
        for name in fields:
            pipe.hincrby(mkey, name, 1)
            pipe.hincrby(hkey, name, 1)
        expiries = {
            mkey: int(((minute + 1) * MINUTE + MINUTE_RETENTION).total_seconds()),
            hkey: int(((hour + 1) * HOUR + HOUR_RETENTION).total_seconds()),
        }
        if expire:
            for key, deadline in expiries.items():
                pipe.expireat(key, deadline)
        return expiries

    # Reading

    async def read(self, window: timedelta | None, bucket: timedelta | None, now: datetime) -> Result:
        """The counts per bucket over the window ending now, oldest first, in one pipelined round trip.

        Validation and defaults as GetDeliveryStatsRequest says (`resolve`). Buckets under an hour are summed from
        the minute hashes and end at the end of the current minute; others from the hour hashes, ending at the
        end of the current hour; so the last bucket is the one still filling. The minute hashes are kept 3 days:
        the part of a window of sub-hour buckets older than that reads as zero (ask whole-hour buckets for more).
        """
        window, bucket = resolve(window, bucket)
        now = _aware(now)
        n = math.ceil(window / bucket)
        if bucket < HOUR:
            unit, end_index = MINUTE, _minute_of(now) + 1
            oldest = _minute_of(now - MINUTE_RETENTION)
            kind = "m"
        else:
            unit, end_index = HOUR, _hour_of(now) + 1
            oldest = _hour_of(now - HOUR_RETENTION)
            kind = "h"
        per_bucket = int(bucket / unit)
        start_index = end_index - n * per_bucket
        indexes = range(max(start_index, oldest), end_index)
        raws: Sequence[Any] = []
        if indexes:
            async with self.redis.pipeline(transaction=False) as pipe:
                for index in indexes:
                    pipe.hgetall(f"{self.prefix}{kind}:{index}")
                raws = await pipe.execute()
        per: list[Counts] = [Counts() for _ in range(n)]
        for index, raw in zip(indexes, raws, strict=True):
            if raw:
                per[(index - start_index) // per_bucket].add_hash(raw)
        total = Counts()
        start = _EPOCH + unit * start_index
        buckets: list[BucketStats] = []
        for i, counts in enumerate(per):
            total.add(counts)
            p50, p95 = percentiles(counts.latencies, (0.5, 0.95))
            buckets.append(BucketStats(start + bucket * i, counts, p50, p95))
        top = sorted(total.errors.items(), key=lambda item: (-item[1], item[0]))[:TOP_ERRORS]
        p50, p95 = percentiles(total.latencies, (0.5, 0.95))
        return Result(
            start=start,
            bucket=bucket,
            buckets=buckets,
            total=total,
            p50=p50,
            p95=p95,
            top_errors=[ErrorCount(code, description(code), count) for code, count in top if count > 0],
        )

    async def recent(self, now: datetime) -> Recent:
        """Sent in the last minute and hour, failed in the last hour: GetQueueStats' counts, one round trip.

        Minute hashes hold whole minutes, so a sliding span is the minutes inside it plus the share of the oldest
        minute it still covers (the usual sliding-window estimate): exact for steady traffic, and never more than
        one minute's count off.
        """
        now = _aware(now)
        current = _minute_of(now)
        # How much of the minute before the span's first whole minute is still inside the span.
        left = 1.0 - (now - (_EPOCH + MINUTE * current)) / MINUTE
        async with self.redis.pipeline(transaction=False) as pipe:
            for minute in range(current - 60, current + 1):
                pipe.hmget(self.minute_key(minute), [SENT, FAILED])
            rows: Sequence[Any] = await pipe.execute()
        sent = [int(r[0] or 0) for r in rows]  # oldest (current - 60) first
        failed = [int(r[1] or 0) for r in rows]
        return Recent(
            sent_last_minute=round(sent[-1] + sent[-2] * left),
            sent_last_hour=round(sum(sent[1:]) + sent[0] * left),
            failed_last_hour=round(sum(failed[1:]) + failed[0] * left),
        )
