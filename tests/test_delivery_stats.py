"""Delivery counters (server/delivery_stats.py) over the session's real Valkey, and GetDeliveryStats /
GetQueueStats through the in-process server: buckets, percentiles, top errors, validation and access."""

from __future__ import annotations

import math
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from redis.asyncio import Redis
from sms.v1 import sms_pb2

from server.delivery_stats import (
    LATENCY_GROWTH,
    DeliveryStats,
    StatEvent,
    bucket_value,
    latency_bucket,
    resolve,
)
from server.embedded import EmbeddedServer, free_port
from server.errors import InvalidArgument
from server.twilio_errors import DESCRIPTIONS, description
from tests.support.identities import auth, unique_number, unique_user
from tests.support.in_process import House, house_env, running_house
from tests.support.polling import eventually_async

ADMIN = auth("admin-stats", "admin")


@pytest.fixture
async def redis(redis_server: EmbeddedServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.uri)
    yield client
    await client.aclose()


@pytest.fixture
def stats(redis: Redis) -> DeliveryStats:
    # A prefix of its own: the session's Valkey is shared by every test.
    return DeliveryStats(redis, f"test:{uuid.uuid4().hex[:8]}:stats:")


def hour_start(ago: int) -> datetime:
    """The start of the hour `ago` hours before the current one: fixed times the counters still keep."""
    t = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return t - timedelta(hours=ago)


# Writing and reading back


async def test_minute_buckets_count_each_event_in_its_minute(stats: DeliveryStats) -> None:
    base = hour_start(2)
    now = base + timedelta(minutes=9, seconds=30)
    await stats.record("queued", base + timedelta(minutes=0, seconds=5))
    await stats.record("queued", base + timedelta(minutes=0, seconds=59))
    await stats.record("sent", base + timedelta(minutes=1))
    await stats.record("failed", base + timedelta(minutes=3, seconds=1), error_code=30008)
    await stats.record("canceled", base + timedelta(minutes=9, seconds=10))
    await stats.record("sending", base + timedelta(minutes=9))  # not a counted event: ignored
    result = await stats.read(timedelta(minutes=10), timedelta(minutes=1), now)
    assert result.start == base
    assert result.bucket == timedelta(minutes=1)
    assert [b.start for b in result.buckets] == [base + timedelta(minutes=i) for i in range(10)]
    assert [b.counts.count("queued") for b in result.buckets] == [2] + [0] * 9
    assert [b.counts.count("sent") for b in result.buckets] == [0, 1] + [0] * 8
    assert [b.counts.count("failed") for b in result.buckets] == [0, 0, 0, 1] + [0] * 6
    assert [b.counts.count("canceled") for b in result.buckets] == [0] * 9 + [1]
    assert result.total.events == {"queued": 2, "sent": 1, "failed": 1, "canceled": 1}


async def test_wider_minute_buckets_sum_their_minutes_and_end_with_the_current_one(stats: DeliveryStats) -> None:
    base = hour_start(2)
    now = base + timedelta(minutes=29, seconds=1)
    for minute in (0, 4, 5, 14, 29):
        await stats.record("sent", base + timedelta(minutes=minute))
    result = await stats.read(timedelta(minutes=30), timedelta(minutes=5), now)
    # Six buckets of five minutes ending at the end of minute 29.
    assert result.start == base
    assert [b.counts.count("sent") for b in result.buckets] == [2, 1, 1, 0, 0, 1]


async def test_hour_buckets_read_the_hour_hashes(stats: DeliveryStats) -> None:
    base = hour_start(10)
    now = base + timedelta(hours=5, minutes=20)
    await stats.record("delivered", base + timedelta(minutes=1), latency=timedelta(seconds=3))
    await stats.record("delivered", base + timedelta(hours=1, minutes=59), latency=timedelta(seconds=3))
    await stats.record("undelivered", base + timedelta(hours=3, minutes=30), error_code=30003)
    await stats.record("queued", base + timedelta(hours=5, minutes=10))
    hourly = await stats.read(timedelta(hours=6), timedelta(hours=1), now)
    assert hourly.start == base
    assert [b.counts.count("delivered") for b in hourly.buckets] == [1, 1, 0, 0, 0, 0]
    assert [b.counts.count("undelivered") for b in hourly.buckets] == [0, 0, 0, 1, 0, 0]
    assert [b.counts.count("queued") for b in hourly.buckets] == [0, 0, 0, 0, 0, 1]
    two_hourly = await stats.read(timedelta(hours=6), timedelta(hours=2), now)
    assert [b.counts.count("delivered") for b in two_hourly.buckets] == [2, 0, 0]
    assert [b.start for b in two_hourly.buckets] == [base + timedelta(hours=h) for h in (0, 2, 4)]


async def test_the_default_is_24_hour_buckets_over_a_day(stats: DeliveryStats) -> None:
    now = hour_start(0) + timedelta(minutes=30)
    await stats.record("sent", now - timedelta(hours=23))
    await stats.record("sent", now - timedelta(hours=30))  # before the window
    result = await stats.read(None, None, now)
    assert result.bucket == timedelta(hours=1)
    assert len(result.buckets) == 24
    assert result.start == hour_start(23)
    assert result.total.count("sent") == 1
    assert result.buckets[0].counts.count("sent") == 1


async def test_bulk_recording_counts_like_one_by_one(stats: DeliveryStats, redis: Redis) -> None:
    base = hour_start(3)
    events = [StatEvent("sent", base + timedelta(minutes=i % 7)) for i in range(23)]
    events += [StatEvent("failed", base + timedelta(minutes=2), error_code=21211)] * 3
    assert await stats.record_many(events, batch=10) == 26
    result = await stats.read(timedelta(minutes=7), timedelta(minutes=1), base + timedelta(minutes=6))
    assert [b.counts.count("sent") for b in result.buckets] == [4, 4, 3, 3, 3, 3, 3]
    assert result.top_errors[0].code == 21211 and result.top_errors[0].count == 3
    # Every key expires with its own minute or hour.
    minute = int(base.timestamp()) // 60
    ttl = await redis.ttl(stats.minute_key(minute))
    assert 0 < ttl <= 3 * 86400 + 60
    assert 0 < await redis.ttl(stats.hour_key(minute // 60)) <= 40 * 86400 + 3600


async def test_events_older_than_their_retention_are_not_kept(stats: DeliveryStats, redis: Redis) -> None:
    old = datetime.now(UTC) - timedelta(days=4)
    await stats.record("sent", old)
    assert not await redis.exists(stats.minute_key(int(old.timestamp()) // 60))
    assert await redis.exists(stats.hour_key(int(old.timestamp()) // 3600))


# Percentiles


def test_latency_buckets_grow_by_a_quarter() -> None:
    assert latency_bucket(timedelta(0)) == 0
    assert latency_bucket(timedelta(seconds=0.1)) == 0
    assert latency_bucket(timedelta(seconds=0.11)) == 1
    assert latency_bucket(timedelta(seconds=0.125)) == 1
    assert latency_bucket(timedelta(seconds=0.126)) == 2
    assert latency_bucket(timedelta(days=30)) == latency_bucket(timedelta(days=300))
    for seconds in (0.3, 1.0, 7.5, 42.0, 3600.0, 86400.0):
        estimate = bucket_value(latency_bucket(timedelta(seconds=seconds))).total_seconds()
        assert seconds / LATENCY_GROWTH <= estimate <= seconds * LATENCY_GROWTH


async def test_percentiles_are_within_one_histogram_bucket_of_the_truth(stats: DeliveryStats) -> None:
    base = hour_start(2)
    # 200 deliveries: 1 s .. 100 s in the first minute, 101 s .. 200 s in the second.
    latencies = [float(s) for s in range(1, 201)]
    await stats.record_many(
        StatEvent("delivered", base + timedelta(minutes=0 if s <= 100 else 1), latency=timedelta(seconds=s))
        for s in latencies
    )
    result = await stats.read(timedelta(minutes=2), timedelta(minutes=1), base + timedelta(minutes=1, seconds=5))

    def close(estimate: timedelta | None, truth: float) -> bool:
        assert estimate is not None
        return truth / LATENCY_GROWTH <= estimate.total_seconds() <= truth * LATENCY_GROWTH

    assert close(result.p50, 100.0)
    assert close(result.p95, 190.0)
    first, second = result.buckets
    assert close(first.p50, 50.0) and close(first.p95, 95.0)
    assert close(second.p50, 150.0) and close(second.p95, 195.0)


async def test_a_bucket_without_deliveries_has_no_percentile(stats: DeliveryStats) -> None:
    base = hour_start(2)
    await stats.record("sent", base)
    result = await stats.read(timedelta(minutes=1), timedelta(minutes=1), base)
    assert result.buckets[0].p50 is None and result.p95 is None


# Errors


async def test_top_errors_are_ordered_with_descriptions_and_at_most_ten(stats: DeliveryStats) -> None:
    base = hour_start(2)
    counts = {30003: 5, 21211: 3, 30008: 3, 30007: 2}
    events = [
        StatEvent("undelivered" if code >= 30000 else "failed", base, error_code=code)
        for code, n in counts.items()
        for _ in range(n)
    ]
    # Eight more codes, once each, two of them unknown to the table; a delivered message carries no code.
    events += [StatEvent("failed", base, error_code=code) for code in (30001, 30002, 30004, 30005, 30006, 30009)]
    events += [StatEvent("failed", base, error_code=code) for code in (39999, 12345)]
    events += [StatEvent("delivered", base, error_code=30001), StatEvent("failed", base)]
    await stats.record_many(events)
    result = await stats.read(timedelta(minutes=5), timedelta(minutes=1), base + timedelta(minutes=1))
    top = result.top_errors
    assert len(top) == 10
    assert [(e.code, e.count) for e in top[:4]] == [(30003, 5), (21211, 3), (30008, 3), (30007, 2)]
    # Ties by code: the remaining six with one each, lowest codes first.
    assert [e.code for e in top[4:]] == [12345, 30001, 30002, 30004, 30005, 30006]
    assert top[0].description == "Unreachable destination handset"
    assert top[3].description.startswith("Message filtered")
    assert top[4].description == ""
    assert result.total.count("failed") == 12


def test_the_error_table_holds_the_common_codes_briefly() -> None:
    for code in (21211, 21408, 21606, 21610, 21611, 21612, 21614, 21617, *range(30001, 30011), 30019, 30022):
        assert description(code), code
    assert description(30024) and description(30034)
    assert description(99999) == ""
    assert all(0 < len(text) <= 80 for text in DESCRIPTIONS.values())


# GetQueueStats' recent counts


async def test_recent_counts_slide_over_the_last_minute_and_hour(stats: DeliveryStats) -> None:
    now = hour_start(1) + timedelta(minutes=30, seconds=15)  # a quarter into minute 30
    current = now.replace(second=0)
    await stats.record_many(
        [
            StatEvent("sent", current + timedelta(seconds=1)),
            StatEvent("sent", current - timedelta(minutes=1)),  # three quarters of it in the last minute
            StatEvent("sent", current - timedelta(minutes=1)),
            StatEvent("sent", current - timedelta(minutes=1)),
            StatEvent("sent", current - timedelta(minutes=1)),
            StatEvent("sent", current - timedelta(minutes=40)),
            StatEvent("failed", current - timedelta(minutes=59), error_code=30008),
            StatEvent("failed", current - timedelta(minutes=61)),  # before the hour
        ]
    )
    recent = await stats.recent(now)
    assert recent.sent_last_minute == 1 + 3  # 1 + 4 * 0.75
    assert recent.sent_last_hour == 6
    assert recent.failed_last_hour == 1


# Failure of Redis


async def test_a_count_that_cannot_reach_redis_is_dropped_quickly() -> None:
    dead = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    try:
        stats = DeliveryStats(dead, "dead:stats:")
        await stats.record("sent", datetime.now(UTC))  # logged, not raised
    finally:
        await dead.aclose()


# Validation


@pytest.mark.parametrize(
    ("window", "bucket", "field"),
    [
        (timedelta(seconds=59), None, "window"),
        (timedelta(days=35, seconds=1), None, "window"),
        (timedelta(seconds=-60), None, "window"),
        (timedelta(hours=1), timedelta(seconds=90), "bucket"),
        (timedelta(hours=1), timedelta(seconds=-60), "bucket"),
        (timedelta(days=2), timedelta(minutes=1), "bucket"),  # 2,880 buckets
        (timedelta(days=2), timedelta(minutes=90), "bucket"),  # an hour or more, not whole hours
    ],
)
def test_bad_windows_and_buckets_name_their_field(
    window: timedelta | None, bucket: timedelta | None, field: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        resolve(window, bucket)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("window", "bucket", "expected"),
    [
        (None, None, (timedelta(hours=24), timedelta(hours=1))),
        (timedelta(0), timedelta(0), (timedelta(hours=24), timedelta(hours=1))),
        (timedelta(minutes=1), None, (timedelta(minutes=1), timedelta(minutes=1))),
        (timedelta(hours=2), None, (timedelta(hours=2), timedelta(minutes=5))),
        (timedelta(hours=30), None, (timedelta(hours=30), timedelta(hours=1))),
        (timedelta(days=35), None, (timedelta(days=35), timedelta(hours=35))),
        (timedelta(days=1), timedelta(minutes=1), (timedelta(days=1), timedelta(minutes=1))),
        (timedelta(days=35), timedelta(hours=1), (timedelta(days=35), timedelta(hours=1))),
    ],
)
def test_defaults_and_accepted_buckets(
    window: timedelta | None, bucket: timedelta | None, expected: tuple[timedelta, timedelta]
) -> None:
    got = resolve(window, bucket)
    assert got == expected
    assert math.ceil(got[0] / got[1]) <= 1440


# Through the server


@pytest.fixture(scope="module")
async def house(mongo: EmbeddedServer, redis_server: EmbeddedServer) -> AsyncIterator[House]:
    async with running_house(house_env(mongo.uri, redis_server.uri)) as running:
        yield running


def duration(**kw: float) -> Duration:
    d = Duration()
    d.FromTimedelta(timedelta(**kw))
    return d


async def test_get_delivery_stats_answers_admins_with_every_bucket(house: House) -> None:
    resp: sms_pb2.GetDeliveryStatsResponse = await house.sms.GetDeliveryStats(
        sms_pb2.GetDeliveryStatsRequest(), metadata=ADMIN
    )
    assert len(resp.buckets) == 24
    assert resp.bucket.ToTimedelta() == timedelta(hours=1)
    assert resp.buckets[0].start_time == resp.start_time
    minutes: sms_pb2.GetDeliveryStatsResponse = await house.sms.GetDeliveryStats(
        sms_pb2.GetDeliveryStatsRequest(window=duration(hours=1), bucket=duration(minutes=2)), metadata=ADMIN
    )
    assert len(minutes.buckets) == 30
    assert minutes.bucket.ToTimedelta() == timedelta(minutes=2)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"window": duration(seconds=30)}, "window"),
        ({"window": duration(days=36)}, "window"),
        ({"window": duration(hours=1), "bucket": duration(seconds=30)}, "bucket"),
        ({"window": duration(days=3), "bucket": duration(minutes=1)}, "bucket"),
        ({"window": duration(days=3), "bucket": duration(minutes=150)}, "bucket"),
    ],
)
async def test_get_delivery_stats_refuses_a_bad_window_or_bucket(
    house: House, request_fields: dict[str, Duration], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await house.sms.GetDeliveryStats(sms_pb2.GetDeliveryStatsRequest(**request_fields), metadata=ADMIN)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith(f"{field}:")


async def test_get_delivery_stats_is_for_admins_only(house: House) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await house.sms.GetDeliveryStats(sms_pb2.GetDeliveryStatsRequest(), metadata=auth(unique_user(), "agent"))
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_get_queue_stats_reads_the_recent_counts_from_the_counters(house: House) -> None:
    # The server's own counters, as the gateway keeps them.
    stats = house.res.gateway.stats
    before: sms_pb2.GetQueueStatsResponse = await house.sms.GetQueueStats(
        sms_pb2.GetQueueStatsRequest(), metadata=ADMIN
    )
    at = datetime.now(UTC)
    await stats.record("sent", at)
    await stats.record("failed", at, error_code=30008)
    after: sms_pb2.GetQueueStatsResponse = await house.sms.GetQueueStats(sms_pb2.GetQueueStatsRequest(), metadata=ADMIN)
    assert after.sent_last_hour == before.sent_last_hour + 1
    assert after.failed_last_hour == before.failed_last_hour + 1
    assert after.sent_last_minute >= 1


async def test_sends_and_outcomes_are_counted_end_to_end(house: House) -> None:
    """Send, the worker and the simulator's callbacks through the gateway's counting (Gateway._count, finish)."""
    user = unique_user()
    fine, bounced = unique_number(), unique_number()
    house.set_rules(outcomes={bounced: {"status": "failed", "error_code": 30007}})
    try:
        await _send_and_count(house, user, fine, bounced)
    finally:
        house.set_rules()


async def _send_and_count(house: House, user: str, fine: str, bounced: str) -> None:
    start: sms_pb2.GetDeliveryStatsResponse = await house.sms.GetDeliveryStats(
        sms_pb2.GetDeliveryStatsRequest(window=duration(minutes=10), bucket=duration(minutes=1)), metadata=ADMIN
    )
    for to, body in ((fine, "one"), (fine, "two"), (bounced, "three")):
        await house.sms.Send(sms_pb2.SendRequest(to=to, body=body), metadata=auth(user))
    await house.work()

    def totals(resp: sms_pb2.GetDeliveryStatsResponse) -> dict[str, int]:
        names = ("queued", "sent", "delivered", "undelivered", "failed", "canceled")
        return {n: sum(getattr(b, n) for b in resp.buckets) for n in names}

    async def read() -> sms_pb2.GetDeliveryStatsResponse:
        resp: sms_pb2.GetDeliveryStatsResponse = await house.sms.GetDeliveryStats(
            sms_pb2.GetDeliveryStatsRequest(window=duration(minutes=10), bucket=duration(minutes=1)), metadata=ADMIN
        )
        return resp

    before = totals(start)
    resp = await eventually_async(
        read,
        15,
        "the delivered and failed counts",
        until=lambda r: (
            totals(r)["delivered"] - before["delivered"] >= 2 and totals(r)["failed"] - before["failed"] >= 1
        ),
    )
    after = totals(resp)
    assert after["queued"] - before["queued"] == 3
    assert after["sent"] - before["sent"] == 2  # the failed one went queued -> sending -> failed
    assert after["delivered"] - before["delivered"] == 2
    assert after["failed"] - before["failed"] == 1
    assert any(e.code == 30007 and e.description.startswith("Message filtered") for e in resp.top_errors)
    assert resp.delivered_p50.ToTimedelta() > timedelta(0)
