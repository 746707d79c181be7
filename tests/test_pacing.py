"""Sender pacing (server/worker/pacing.py) against the session's real Valkey: workers are SenderPacing instances on
their own connections, sharing buckets only through the server."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from server.embedded import EmbeddedServer, free_port
from server.worker.pacing import ARRIVAL_MARGIN, SenderPacing

PREFIX = "sms:test-pacing:"
# How late the event loop may wake a sleeper: a start can be that much after its slot, so two starts can be that
# much closer together than the pacing put them.
JITTER = 0.05


@pytest.fixture
async def workers(redis_server: EmbeddedServer) -> AsyncIterator[tuple[Redis, Redis]]:
    """Two connections, as two worker processes would have."""
    first, second = Redis.from_url(redis_server.uri), Redis.from_url(redis_server.uri)
    yield first, second
    await first.aclose()
    await second.aclose()


def sender() -> str:
    """A sender no other test (or earlier run) has a bucket for."""
    return "+1555" + uuid.uuid4().hex[:10]


async def test_two_workers_share_one_rate(workers: tuple[Redis, Redis]) -> None:
    rate = 10
    pacers = [SenderPacing(conn, rate, PREFIX) for conn in workers]
    number = sender()
    begin = time.monotonic()
    starts: list[float] = []

    async def send(pacer: SenderPacing) -> None:
        await pacer.take(number, 1)
        starts.append(time.monotonic())

    await asyncio.gather(*(send(pacers[i % 2]) for i in range(30)))

    starts.sort()
    # No 1-second window holds more than `rate` starts: the start `rate` places later is a second on.
    gaps = [later - earlier for earlier, later in zip(starts, starts[rate:], strict=False)]
    assert min(gaps) >= 1.0 - JITTER, gaps
    # 30 starts 0.1 s apart (and the 5% margin): the last one about 3.05 s after the first.
    assert 2.9 <= starts[-1] - begin <= 4.0


async def test_senders_do_not_wait_for_each_other(workers: tuple[Redis, Redis]) -> None:
    busy, idle = sender(), sender()
    pacer = SenderPacing(workers[0], 2, PREFIX)
    assert await pacer.take(busy, 20) == 0.0  # goes at once; the next message from `busy` waits 10 s
    queued = asyncio.create_task(SenderPacing(workers[1], 2, PREFIX).take(busy, 1))
    try:
        await asyncio.sleep(0.1)
        begin = time.monotonic()
        assert await pacer.take(idle, 1) == 0.0
        assert time.monotonic() - begin < 0.5
        assert not queued.done()
    finally:
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued


async def test_rate_zero_is_unpaced_and_never_calls_redis() -> None:
    # Nothing listens on this port: any Redis call would fail.
    nowhere = Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    try:
        pacer = SenderPacing(nowhere, 0, PREFIX)
        number = sender()
        begin = time.monotonic()
        for _ in range(100):
            assert await pacer.take(number, 10) == 0.0
        assert time.monotonic() - begin < 0.5
    finally:
        await nowhere.aclose()


async def test_long_message_goes_and_the_next_pays_for_it(workers: tuple[Redis, Redis]) -> None:
    pacer = SenderPacing(workers[0], 2, PREFIX)
    number = sender()
    begin = time.monotonic()
    # More segments than the burst (one): it still goes, at once, and reserves 5 / 2 = 2.5 s (plus the 5% margin).
    assert await pacer.take(number, 5) == 0.0
    ttl_ms = await workers[0].pttl(PREFIX + number)
    assert 2000 < ttl_ms <= 3700  # the reservation plus a second: an idle sender leaves nothing behind
    waited = await pacer.take(number, 1)
    assert 2.4 <= waited <= 2.5 * ARRIVAL_MARGIN
    assert 2.5 <= time.monotonic() - begin <= 3.3


async def test_bad_rate_is_refused(workers: tuple[Redis, Redis]) -> None:
    for rate in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            SenderPacing(workers[0], rate, PREFIX)
