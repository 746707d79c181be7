"""Subscribe end to end: entitlement, resume, trimming, slow consumers, replicas, restarts, shutdown."""

from __future__ import annotations

import asyncio
import functools
import re
import signal
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from redis.asyncio import Redis
from sms.v1 import ingest_pb2, ingest_pb2_grpc, sms_pb2, sms_pb2_grpc, types_pb2
from sms_gateway_client import Backoff, subscribe

from server.embedded import free_port, start_redis
from tests.support.identities import auth, token, unique_number, unique_user
from tests.support.launch import start_server
from tests.support.polling import eventually_async
from tests.support.processes import ChildProcess

Response = sms_pb2.SubscribeResponse
Entry = tuple[bytes, dict[bytes, bytes]]
OUR_NUMBER = "+15005550006"
COUNT_LINE = re.compile(r"hub: (\d+) subscribers")


# Helpers


def key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq)


@dataclass
class Stream:
    """A raw Subscribe call read by a background task; what it got, and when."""

    call: grpc.aio.UnaryStreamCall[sms_pb2.SubscribeRequest, Response]
    responses: list[Response] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)
    error: grpc.aio.AioRpcError | None = None
    task: asyncio.Task[None] | None = None
    reading: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def events(self) -> list[sms_pb2.SubscribeResponse]:
        return [r for r in self.responses if r.WhichOneof("response") == "event"]

    @property
    def event_ids(self) -> list[str]:
        return [r.event.id for r in self.events]

    @property
    def resyncs(self) -> list[sms_pb2.ResyncRequired]:
        return [r.resync_required for r in self.responses if r.WhichOneof("response") == "resync_required"]

    def latest(self) -> tuple[int, int]:
        ids = self.event_ids
        return key(ids[-1]) if ids else (0, 0)

    async def _run(self) -> None:
        try:
            while True:
                await self.reading.wait()
                response = await self.call.read()
                if response is grpc.aio.EOF:
                    return
                assert isinstance(response, Response)
                self.responses.append(response)
                self.received_at.append(time.monotonic())
        except grpc.aio.AioRpcError as exc:
            self.error = exc

    async def started(self) -> Stream:
        """Waits for the first response (the server registered the subscriber and says where the log is)."""
        await eventually_async(lambda: bool(self.responses) or self.error is not None, 10, "the first response")
        assert self.error is None, self.error
        return self


def caught_up(stream: Stream, event_id: str) -> Callable[[], bool]:
    return lambda: stream.latest() >= key(event_id)


def has_message(stream: Stream, message_id: str) -> bool:
    return any(r.event.message.id == message_id for r in stream.events[-4:])


def open_stream(
    stub: sms_pb2_grpc.SmsServiceAsyncStub,
    user: str,
    role: str = "agent",
    *,
    reading: bool = True,
    **request: str | bool,
) -> Stream:
    call = stub.Subscribe(sms_pb2.SubscribeRequest(**request), metadata=auth(user, role))  # type: ignore[arg-type]
    stream = Stream(call)
    if reading:
        stream.reading.set()
    stream.task = asyncio.create_task(stream._run())
    return stream


async def close_streams(*streams: Stream) -> None:
    for s in streams:
        s.call.cancel()
        s.reading.set()
    await asyncio.gather(*(s.task for s in streams if s.task), return_exceptions=True)


async def xrange_after(redis: Redis, start: str, stream: str = "sms:events") -> list[Entry]:
    entries: list[Entry] = await redis.xrange(stream, min="(" + start, max="+")
    return entries


def ids_of(entries: list[Entry], owner: str | None = None) -> list[str]:
    return [i.decode() for i, f in entries if owner is None or f[b"owner"].decode() == owner]


def entitled(entries: list[Entry], agent: str) -> list[str]:
    """What an agent's stream gets by default (SMS_UNASSIGNED_VISIBLE_TO_AGENTS): events of their own and of
    unassigned conversations, and a change of assignee's event when either side was one of those."""
    mine = ("", agent)
    return [
        i.decode()
        for i, f in entries
        if f[b"owner"].decode() in mine or f.get(b"previous_owner", b"\x00").decode() in mine
    ]


async def last_id(redis: Redis, stream: str = "sms:events") -> str:
    entries = await redis.xrevrange(stream, count=1)
    return entries[0][0].decode() if entries else "0-0"


async def send(stub: sms_pb2_grpc.SmsServiceAsyncStub, user: str, to: str, body: str = "hi") -> types_pb2.Message:
    resp = await stub.Send(sms_pb2.SendRequest(to=to, body=body), metadata=auth(user))
    return resp.message


async def inbound(
    ingest: ingest_pb2_grpc.SmsIngestServiceAsyncStub, from_number: str, sid: str, body: str = "yo"
) -> types_pb2.Message:
    resp = await ingest.RecordInbound(
        ingest_pb2.RecordInboundRequest(message_sid=sid, from_number=from_number, to_number=OUR_NUMBER, body=body),
        metadata=auth("bridge", "service"),
    )
    return resp.message


async def status(ingest: ingest_pb2_grpc.SmsIngestServiceAsyncStub, sid: str, value: str) -> None:
    await ingest.RecordStatus(
        ingest_pb2.RecordStatusRequest(message_sid=sid, message_status=value), metadata=auth("bridge", "service")
    )


def sid() -> str:
    return "SM" + uuid.uuid4().hex


def counts(proc: ChildProcess) -> list[int]:
    return [int(n) for n in COUNT_LINE.findall(proc.log())]


# Fixtures: extra server processes, started once for the module


@pytest.fixture(scope="module")
async def redis(base_env: dict[str, str]) -> AsyncIterator[Redis]:
    client = Redis.from_url(base_env["REDIS_URL"])
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def replica(base_env: dict[str, str]) -> Iterator[str]:
    """A second replica beside the session's server: same MongoDB, same Redis stream."""
    proc, addr = start_server(base_env)
    yield addr
    proc.stop()


@dataclass
class Killable:
    env: dict[str, str]
    port: int
    proc: ChildProcess

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def restart(self) -> None:
        self.proc, _ = start_server(self.env, self.port)


@pytest.fixture(scope="module")
def killable(base_env: dict[str, str]) -> Iterator[Killable]:
    """A replica the tests kill, restart and SIGTERM; its log shows the subscriber count."""
    port = free_port()
    env = {**base_env, "SMS_DRAIN_SECONDS": "3"}
    proc, _ = start_server(env, port)
    k = Killable(env, port, proc)
    yield k
    k.proc.stop()


@dataclass
class Small:
    addr: str
    stream: str


@pytest.fixture(scope="module")
def small(base_env: dict[str, str]) -> Iterator[Small]:
    """A server on its own stream that keeps ~10 events and queues 16 per subscriber."""
    stream = f"sms:events:small-{uuid.uuid4().hex[:8]}"
    proc, addr = start_server(
        {**base_env, "SMS_EVENT_STREAM": stream, "SMS_EVENT_RETENTION": "10", "SMS_SUBSCRIBER_QUEUE_SIZE": "16"}
    )
    yield Small(addr, stream)
    proc.stop()


@pytest.fixture
async def replica_channel(replica: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(replica) as ch:
        yield ch


# Tests


async def test_each_subscriber_sees_exactly_its_events(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, ingest: ingest_pb2_grpc.SmsIngestServiceAsyncStub, redis: Redis
) -> None:
    a, b, c, admin = unique_user(), unique_user(), unique_user(), unique_user("admin")
    start = await last_id(redis)
    sa, sb = open_stream(sms, a), open_stream(sms, b)
    # An agent asking for every owner still gets only their own (the contract: all_owners is admin only).
    sc = open_stream(sms, c, all_owners=True)
    sadmin = open_stream(sms, admin, "admin", all_owners=True)
    for s in (sa, sb, sc, sadmin):
        await s.started()
        first = s.responses[0]
        assert first.WhichOneof("response") == "heartbeat"
        assert key(first.heartbeat.last_event_id) >= key(start)

    n1, n2, n3, n4 = (unique_number() for _ in range(4))
    await send(sms, a, n1)
    await send(sms, b, n2)
    s1 = sid()
    await inbound(ingest, n1, s1)  # into a's conversation
    await status(ingest, s1, "read")
    s3 = sid()
    await inbound(ingest, n3, s3)  # a new contact: unassigned, the admins'
    await send(sms, a, n3)  # a answers and takes the conversation over: later events carry a as owner
    await inbound(ingest, n3, sid())
    await send(sms, c, n4)
    end = await last_id(redis)

    entries = await xrange_after(redis, start)
    for s, owner in ((sa, a), (sb, b), (sc, c)):
        expected = entitled(entries, owner)
        await eventually_async(caught_up(s, expected[-1]), 10, f"{owner}'s events")
    await eventually_async(lambda: sadmin.latest() >= key(end), 10, "the admin's events")
    entries = await xrange_after(redis, start)
    # Other tests share the log: compare up to the last event each stream was waited for.
    for s, owner in ((sa, a), (sb, b), (sc, c)):
        expected = entitled(entries, owner)
        assert [i for i in s.event_ids if key(i) <= key(end)] == [i for i in expected if key(i) <= key(end)]
    assert [i for i in sadmin.event_ids if key(i) <= key(end)] == [i for i in ids_of(entries) if key(i) <= key(end)]

    # The payloads say what happened, in order: a sees its inbound message become read; b sees n3's
    # conversation while it is unassigned, then one update showing a, and nothing after.
    a_events = [r.event for r in sa.events]
    statuses = [
        e.message.status for e in a_events if e.WhichOneof("payload") == "message" and e.message.from_number == n1
    ]
    assert len(statuses) == 2 and statuses[0] != statuses[1]
    n3_conversation = [
        e.conversation
        for e in a_events
        if e.WhichOneof("payload") == "conversation" and e.conversation.contact_number == n3
    ]
    assert n3_conversation and n3_conversation[0].owner == "" and n3_conversation[-1].owner == a
    b_n3 = [r.event for r in sb.events if n3 in (r.event.conversation.contact_number, r.event.message.from_number)]
    assert b_n3 and b_n3[-1].conversation.owner == a
    assert [e.conversation.owner for e in b_n3 if e.WhichOneof("payload") == "conversation"].count(a) == 1
    assert len(
        [
            r
            for r in sadmin.events
            if r.event.WhichOneof("payload") == "conversation" and r.event.conversation.contact_number == n3
        ]
    ) == len(n3_conversation)
    assert not sb.resyncs and not sa.resyncs
    await close_streams(sa, sb, sc, sadmin)


async def test_narrowing_to_a_conversation(sms: sms_pb2_grpc.SmsServiceAsyncStub, redis: Redis) -> None:
    a, b = unique_user(), unique_user()
    mine = await send(sms, a, unique_number())
    other = await send(sms, a, unique_number())
    call = sms.Subscribe(sms_pb2.SubscribeRequest(conversation_id=mine.conversation_id), metadata=auth(b))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    narrowed = await open_stream(sms, a, conversation_id=mine.conversation_id).started()
    admin = await open_stream(sms, "boss", "admin", conversation_id=other.conversation_id).started()
    await send(sms, a, other.to_number)
    await send(sms, a, mine.to_number)
    await eventually_async(lambda: len(narrowed.events) >= 2 and len(admin.events) >= 2, 10, "narrowed events")
    assert {r.event.message.conversation_id or r.event.conversation.id for r in narrowed.events} == {
        mine.conversation_id
    }
    assert {r.event.message.conversation_id or r.event.conversation.id for r in admin.events} == {other.conversation_id}
    await close_streams(narrowed, admin)


async def test_resume_replays_then_goes_live_without_gap_or_duplicate(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, redis: Redis
) -> None:
    a = unique_user()
    numbers = [unique_number() for _ in range(3)]
    before = await last_id(redis)
    for n in numbers:
        await send(sms, a, n)
    resume_from = ids_of(await xrange_after(redis, before), a)[1]

    sent_live = 0

    async def keep_sending() -> None:
        nonlocal sent_live
        for i in range(30):
            await send(sms, a, numbers[i % 3], f"live {i}")
            sent_live += 1

    # Subscribe while events keep coming, so the seam between replay and live is crossed under load.
    sender = asyncio.create_task(keep_sending())
    await eventually_async(lambda: sent_live >= 3, 10, "the sender to be under way")
    stream = open_stream(sms, a, resume_token=resume_from)
    assert sent_live < 30, "the sender finished before the subscriber started: no seam was crossed"
    await sender
    expected = [i for i in ids_of(await xrange_after(redis, resume_from), a)]
    assert len(expected) >= 60
    await eventually_async(lambda: stream.latest() >= key(expected[-1]), 15, "replay and live events")
    assert stream.event_ids == expected
    assert not stream.resyncs
    await close_streams(stream)


@pytest.mark.parametrize("bad", ["abc", "12", "1-2-3", "-1-0", "1-x", "1 - 2"])
async def test_malformed_resume_token_is_invalid_argument(sms: sms_pb2_grpc.SmsServiceAsyncStub, bad: str) -> None:
    call = sms.Subscribe(sms_pb2.SubscribeRequest(resume_token=bad), metadata=auth(unique_user()))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_subscribe_needs_a_valid_token(sms: sms_pb2_grpc.SmsServiceAsyncStub) -> None:
    call = sms.Subscribe(sms_pb2.SubscribeRequest(), metadata=(("authorization", "Bearer nope"),))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_future_token_gets_resync(sms: sms_pb2_grpc.SmsServiceAsyncStub, redis: Redis) -> None:
    stream = await open_stream(sms, unique_user(), resume_token=f"{(int(time.time()) + 3600) * 1000}-0").started()
    first = stream.responses[0]
    assert first.WhichOneof("response") == "resync_required"
    assert "ahead" in first.resync_required.reason
    assert key(first.resync_required.last_event_id) <= key(await last_id(redis))
    await close_streams(stream)


async def test_token_older_than_the_retained_log_gets_one_resync(small: Small, redis: Redis) -> None:
    a = unique_user()
    async with grpc.aio.insecure_channel(small.addr) as ch:
        stub = sms_pb2_grpc.SmsServiceStub(ch)
        number = unique_number()
        await send(stub, a, number)
        old = await last_id(redis, small.stream)

        async def trimmed() -> bool:
            entries = await redis.xrange(small.stream, count=1)
            return bool(entries) and key(entries[0][0].decode()) > (key(old)[0], key(old)[1] + 1)

        for i in range(40):
            await send(stub, a, number, f"filler {i}")
            if await trimmed():
                break
        assert await trimmed(), "the server's MAXLEN~10 never trimmed the stream"
        last = await last_id(redis, small.stream)
        stream = await open_stream(stub, a, resume_token=old).started()
        first = stream.responses[0]
        assert first.WhichOneof("response") == "resync_required"
        assert "older" in first.resync_required.reason
        assert first.resync_required.last_event_id == last
        await send(stub, a, number, "after the resync")
        await eventually_async(lambda: len(stream.events) >= 2, 10, "live events after the resync")
        assert len(stream.resyncs) == 1
        assert all(key(i) > key(last) for i in stream.event_ids)
        assert stream.event_ids == ids_of(await xrange_after(redis, last, small.stream), a)
        await close_streams(stream)


async def test_a_stalled_subscriber_does_not_delay_another(small: Small, redis: Redis) -> None:
    a = unique_user()
    number = unique_number()
    body = "x" * 1600  # big events fill the stalled client's transport buffers sooner
    async with (
        grpc.aio.insecure_channel(small.addr) as ch,
        grpc.aio.insecure_channel(small.addr, options=[("grpc.http2.bdp_probe", 0)]) as stalled_ch,
    ):
        stub = sms_pb2_grpc.SmsServiceStub(ch)
        active = await open_stream(stub, a).started()
        stalled = await open_stream(sms_pb2_grpc.SmsServiceStub(stalled_ch), a).started()
        stalled.reading.clear()  # reads nothing more until told
        delays: list[float] = []
        sent = 0
        for _ in range(400):
            msg = await send(stub, a, number, body)
            sent_at = time.monotonic()
            sent += 1
            # The poll's step adds to each measured delay: keep it fine.
            await eventually_async(
                functools.partial(has_message, active, msg.id), 5, "the active subscriber's event", interval=0.02
            )
            delays.append(time.monotonic() - sent_at)
            if sent >= 300:
                break
        stalled.reading.set()
        await eventually_async(lambda: bool(stalled.resyncs), 10, "the stalled subscriber's resync")
        resync = stalled.resyncs[0]
        assert resync.reason == "slow consumer"
        delays.sort()
        print(
            f"active subscriber: {sent} events, p50 {delays[len(delays) // 2] * 1000:.1f} ms, "
            f"max {delays[-1] * 1000:.1f} ms; stalled got {len(stalled.events)} events before its resync"
        )
        assert delays[int(len(delays) * 0.99) - 1] < 0.5
        # After the resync the stalled one is live again from the point it was told.
        await send(stub, a, number, "after")
        await eventually_async(lambda: stalled.latest() > key(resync.last_event_id), 10, "live events after the resync")
        await close_streams(active, stalled)


async def test_replicas_share_one_log(
    sms: sms_pb2_grpc.SmsServiceAsyncStub,
    ingest: ingest_pb2_grpc.SmsIngestServiceAsyncStub,
    replica_channel: grpc.aio.Channel,
    redis: Redis,
) -> None:
    a = unique_user()
    other = sms_pb2_grpc.SmsServiceStub(replica_channel)
    other_ingest = ingest_pb2_grpc.SmsIngestServiceStub(replica_channel)
    start = await last_id(redis)
    on_a, on_b = await open_stream(sms, a).started(), await open_stream(other, a).started()
    number = unique_number()
    await send(sms, a, number)  # through replica A
    s = sid()
    await inbound(other_ingest, number, s)  # through replica B
    await status(other_ingest, s, "delivered")
    await status(ingest, s, "read")
    expected = ids_of(await xrange_after(redis, start), a)
    assert len(expected) == 6  # created + conversation, twice; two status updates
    for stream in (on_a, on_b):
        await eventually_async(caught_up(stream, expected[-1]), 10, "events on both replicas")
        assert stream.event_ids == expected
    await close_streams(on_a, on_b)


# Enough writes that the kill lands mid-stream with a third done, few enough to keep the suite short.
WRITES = 240


async def test_helper_survives_a_killed_server_without_gap_or_duplicate(
    killable: Killable, replica_channel: grpc.aio.Channel, redis: Redis
) -> None:
    a = unique_user()
    writer = sms_pb2_grpc.SmsServiceStub(replica_channel)
    writer_ingest = ingest_pb2_grpc.SmsIngestServiceStub(replica_channel)
    numbers = [unique_number() for _ in range(8)]
    start = await last_id(redis)
    got: list[Response] = []
    connected = asyncio.Event()

    async def consume() -> None:
        async for response in subscribe(
            killable.addr, token(a), resume_token=start, heartbeats=True, backoff=Backoff(initial=0.05, maximum=1.0)
        ):
            connected.set()
            got.append(response)

    consumer = asyncio.create_task(consume())
    await asyncio.wait_for(connected.wait(), 10)
    done = 0
    produced = 0  # events the writes append: Send 2, RecordInbound 2, RecordStatus 1

    async def write(worker: int) -> None:
        nonlocal done, produced
        number = numbers[worker]
        for j, i in enumerate(range(worker, WRITES, 8)):
            if j % 2 == 0:  # the first write sends, so a owns the conversation the inbound ones join
                await send(writer, a, number, f"out {i}")
                produced += 2
            else:
                s = sid()
                await inbound(writer_ingest, number, s, f"in {i}")
                await status(writer_ingest, s, "read")
                produced += 3
            done += 1

    writers = asyncio.gather(*(write(w) for w in range(8)))
    await eventually_async(lambda: done >= WRITES // 3, 60, "a third of the writes")
    killable.proc.stop(signal.SIGKILL)
    before_kill = len(got)
    await asyncio.to_thread(killable.restart)
    await writers
    assert done == WRITES
    expected = ids_of(await xrange_after(redis, start), a)
    assert len(expected) == produced

    def events() -> list[str]:
        return [r.event.id for r in got if r.WhichOneof("response") == "event"]

    await eventually_async(
        lambda: bool(events()) and key(events()[-1]) >= key(expected[-1]), 30, "every event after restart"
    )
    consumer.cancel()
    await asyncio.gather(consumer, return_exceptions=True)
    assert 0 < before_kill < len(expected), "the kill must land mid-stream"
    assert events() == expected
    assert not [r for r in got if r.WhichOneof("response") == "resync_required"]


async def test_cancelled_streams_are_released(killable: Killable) -> None:
    async with grpc.aio.insecure_channel(killable.addr) as ch:
        stub = sms_pb2_grpc.SmsServiceStub(ch)
        streams = [
            open_stream(stub, unique_user() if i % 4 else "boss", "agent" if i % 4 else "admin", all_owners=i % 4 == 0)
            for i in range(200)
        ]
        for s in streams:
            await s.started()
        await eventually_async(lambda: counts(killable.proc)[-1:] == [200], 10, "the log to count 200 subscribers")
        await close_streams(*streams)
        await eventually_async(lambda: counts(killable.proc)[-1:] == [0], 10, "the log to count 0 subscribers")


async def test_sigterm_ends_streams_with_unavailable(killable: Killable) -> None:
    async with grpc.aio.insecure_channel(killable.addr) as ch:
        stub = sms_pb2_grpc.SmsServiceStub(ch)
        streams = [
            await open_stream(stub, unique_user()).started(),
            await open_stream(stub, "boss", "admin", all_owners=True).started(),
        ]
        killable.proc.process.send_signal(signal.SIGTERM)
        await eventually_async(lambda: all(s.error is not None for s in streams), 10, "the streams to end")
        for s in streams:
            assert s.error is not None
            assert s.error.code() == grpc.StatusCode.UNAVAILABLE
            assert s.error.details() == "server shutting down"
        await asyncio.to_thread(killable.proc.process.wait, 15)
        assert killable.proc.process.returncode == 0


async def test_idle_subscribers_get_heartbeats(sms: sms_pb2_grpc.SmsServiceAsyncStub, redis: Redis) -> None:
    stream = await open_stream(sms, unique_user()).started()
    await eventually_async(lambda: len(stream.responses) >= 3, 5, "two heartbeats after the first")
    assert all(r.WhichOneof("response") == "heartbeat" for r in stream.responses)
    gaps = [b - a for a, b in zip(stream.received_at, stream.received_at[1:], strict=False)]
    assert all(0.7 < g < 1.8 for g in gaps), gaps  # SMS_HEARTBEAT_SECONDS=1
    assert key(stream.responses[-1].heartbeat.last_event_id) <= key(await last_id(redis))
    await close_streams(stream)


async def test_losing_redis_ends_in_a_resync_not_a_gap(base_env: dict[str, str]) -> None:
    a = unique_user()
    with tempfile.TemporaryDirectory(prefix="sms-test-valkey-") as tmp:
        own = start_redis(Path(tmp))
        proc: ChildProcess | None = None
        try:
            proc, addr = start_server({**base_env, "REDIS_URL": own.uri})
            async with grpc.aio.insecure_channel(addr) as ch:
                stub = sms_pb2_grpc.SmsServiceStub(ch)
                stream = await open_stream(stub, a).started()
                number = unique_number()
                await send(stub, a, number)
                await eventually_async(lambda: len(stream.events) == 2, 10, "events before the outage")
                own.stop()
                own = start_redis(Path(tmp), own.port)  # same data (AOF) and port
                await eventually_async(lambda: bool(stream.resyncs), 20, "a resync after Redis came back")
                assert stream.resyncs[0].reason == "event log was unavailable"
                assert stream.error is None
                await send(stub, a, number, "after")
                await eventually_async(lambda: len(stream.events) == 4, 10, "live events after the resync")
                assert key(stream.event_ids[2]) > key(stream.resyncs[0].last_event_id)
                await close_streams(stream)
        finally:
            if proc is not None:
                proc.stop()
            own.stop()


async def test_a_failed_append_elsewhere_reaches_subscribers_as_a_resync(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, redis: Redis, base_env: dict[str, str]
) -> None:
    """A writer whose append failed (its Redis blipped) marks the gap on its next append; readers resync."""
    from server.events import EventLog

    user = unique_user()
    live = await open_stream(sms, user).started()
    before = await last_id(redis)
    replaying = await open_stream(sms, user, resume_token=before).started()
    writer = EventLog(Redis.from_url(f"redis://127.0.0.1:{free_port()}/0"), "sms:events", 100_000)
    event = types_pb2.Event(
        type=types_pb2.EVENT_TYPE_CONVERSATION_UPDATED, conversation=types_pb2.Conversation(id="c-lost", owner=user)
    )
    assert await writer.append(event, user, "c-lost") is None  # nothing listening on that port
    await writer.redis.aclose()
    writer.redis = redis
    appended = await writer.append(event, user, "c-lost")
    assert appended is not None
    gap = [f for _, f in await xrange_after(redis, before) if b"gap" in f]
    assert [f[b"gap"] for f in gap] == [b"1"]

    def resynced_past_the_gap(s: Stream) -> bool:
        return bool(s.resyncs) and caught_up(s, appended)()

    for stream in (live, replaying):
        await eventually_async(
            functools.partial(resynced_past_the_gap, stream), 10, "a resync, then the event after the gap"
        )
        assert stream.resyncs[0].reason == "a writer could not append some events"
    await close_streams(live, replaying)

    # A subscriber resuming from before the gap later is told too.
    late = await open_stream(sms, user, resume_token=before).started()
    await eventually_async(lambda: caught_up(late, appended)(), 10, "the replay")
    assert late.resyncs and late.event_ids[-1] == appended
    await close_streams(late)
