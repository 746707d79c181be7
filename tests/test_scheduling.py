"""Send later, CancelMessage, RetryMessage, the stored encoding and segments, per-sender pacing and quiet hours, over
the real server, arq workers (in this loop, and as processes that are SIGKILLed), SecantusDB, Valkey and the
Twilio simulator."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from google.protobuf.timestamp_pb2 import Timestamp
from redis.asyncio import Redis
from sms.v1 import ingest_pb2, sms_pb2, types_pb2

from server.embedded import EmbeddedServer
from server.errors import error_reason
from server.quiet_hours import QuietHours
from server.reasons import Reason
from server.timeutil import aware, now
from server.worker.reconcile import reconcile_once
from tests.support.identities import auth, unique_number, unique_user
from tests.support.in_process import FROM_NUMBER, House, house_env, running_house
from tests.support.launch import start_worker
from tests.support.polling import eventually_async

SERVICE = auth("bridge", "service")
# A New York number (area code 212): libphonenumber gives it one zone.
NEW_YORK = "America/New_York"


def new_york_number() -> str:
    return "+1212555" + unique_number()[-4:]


@pytest.fixture(scope="module")
async def house(mongo: EmbeddedServer, redis_server: EmbeddedServer) -> AsyncIterator[House]:
    env = house_env(mongo.uri, redis_server.uri, SMS_RECONCILE_AGE_SECONDS="0.5", SMS_JOB_TIMEOUT_SECONDS="5")
    async with running_house(env) as running:
        yield running


@pytest.fixture(autouse=True)
def default_rules(house: House) -> None:
    house.set_rules()


def ts(t: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(t)
    return out


async def send(house: House, user: str, to: str, body: str, role: str = "agent", **kw: Any) -> sms_pb2.Message:
    resp: sms_pb2.SendResponse = await house.sms.Send(
        sms_pb2.SendRequest(to=to, body=body, **kw), metadata=auth(user, role)
    )
    return resp.message


async def stored(house: House, message_id: str) -> dict[str, Any]:
    doc = await house.res.store.get_message(message_id)
    assert doc is not None
    return dict(doc)


def creates_to(house: House, to: str) -> list[Any]:
    return [m for m in house.sim.state.in_order() if m.to == to and m.direction.startswith("outbound")]


async def refused(call: Any, code: grpc.StatusCode, reason: Reason) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    assert error_reason(info.value) == reason
    return info.value.details() or ""


async def status_of(house: House, message_id: str, status: str, within: float = 10) -> dict[str, Any]:
    return await eventually_async(
        lambda: stored(house, message_id), within, f"status {status}", until=lambda d: d["status"] == status
    )


# Send later


async def test_a_scheduled_message_leaves_at_its_time_and_not_before(house: House) -> None:
    user, to = unique_user(), unique_number()
    at = now() + timedelta(seconds=3)
    msg = await send(house, user, to, "later", send_at=ts(at))
    assert msg.status == types_pb2.MESSAGE_STATUS_SCHEDULED
    assert msg.schedule_reason == types_pb2.SCHEDULE_REASON_REQUESTED
    assert msg.scheduled_time.ToDatetime(tzinfo=UTC) == at
    await house.work()  # burst mode: returns once the deferred job has run
    [created] = creates_to(house, to)
    assert at <= aware(created.date_created) <= at + timedelta(seconds=2)
    doc = await stored(house, msg.id)
    sending = next(h for h in doc["status_history"] if h["status"] == "sending")
    assert aware(sending["time"]) >= at


async def test_a_scheduled_message_survives_a_sigkilled_worker(house: House) -> None:
    user, to = unique_user(), unique_number()
    at = now() + timedelta(seconds=8)
    msg = await send(house, user, to, "survives a kill", send_at=ts(at))
    redis: Redis = house.res.redis
    worker = await start_worker(house.env, redis)
    worker.stop(signal.SIGKILL, timeout=10)
    assert not creates_to(house, to)
    worker = await start_worker(house.env, redis)
    try:
        await status_of(house, msg.id, "delivered", within=20)
    finally:
        worker.stop(signal.SIGTERM, timeout=20)
    [created] = creates_to(house, to)
    assert at <= aware(created.date_created) <= at + timedelta(seconds=2)


async def test_a_due_scheduled_message_whose_job_is_gone_is_picked_up_by_the_reconciler(house: House) -> None:
    user, to = unique_user(), unique_number()
    msg = await send(house, user, to, "lost job", send_at=ts(now() + timedelta(seconds=1)))
    # Redis restarted without its data: the deferred job is gone.
    await house.res.arq.zrem(house.cfg.arq_queue, msg.id)
    await house.res.arq.delete("arq:job:" + msg.id)
    await asyncio.sleep(1.6)  # due, plus SMS_RECONCILE_AGE_SECONDS
    assert await reconcile_once(house.cfg, house.res.gateway) >= 1
    await house.work()
    assert len(creates_to(house, to)) == 1


async def test_a_repeat_after_the_send_time_passed_gets_the_stored_message(house: House) -> None:
    user, to = unique_user(), unique_number()
    request = sms_pb2.SendRequest(to=to, body="soon", request_id="soon-1")
    request.send_at.CopyFrom(ts(now() + timedelta(milliseconds=300)))
    first = await house.sms.Send(request, metadata=auth(user))
    await asyncio.sleep(0.5)
    again = await house.sms.Send(request, metadata=auth(user))
    assert again.duplicate and again.message.id == first.message.id


@pytest.mark.parametrize(
    ("offset", "why"), [(timedelta(seconds=-5), "in the past"), (timedelta(days=36), "beyond 35 days")]
)
async def test_a_send_time_in_the_past_or_too_far_ahead_is_refused(house: House, offset: timedelta, why: str) -> None:
    details = await refused(
        send(house, unique_user(), unique_number(), "x", send_at=ts(now() + offset)),
        grpc.StatusCode.INVALID_ARGUMENT,
        Reason.INVALID_SEND_TIME,
    )
    assert "send_at" in details, why


# Cancel


async def test_cancel_before_the_attempt_stops_the_message(house: House) -> None:
    user, to = unique_user(), unique_number()
    later = await send(house, user, to, "cancel me later", send_at=ts(now() + timedelta(minutes=5)))
    queued = await send(house, user, to, "cancel me now")
    for msg in (later, queued):
        resp = await house.sms.CancelMessage(sms_pb2.CancelMessageRequest(message_id=msg.id), metadata=auth(user))
        assert resp.message.status == types_pb2.MESSAGE_STATUS_CANCELED
        again = await house.sms.CancelMessage(sms_pb2.CancelMessageRequest(message_id=msg.id), metadata=auth(user))
        assert again.message.status == types_pb2.MESSAGE_STATUS_CANCELED
    await house.work()  # the queued one's job runs and finds it canceled
    assert not creates_to(house, to)
    doc = await stored(house, queued.id)
    assert doc["status"] == "canceled" and doc.get("in_flight") is None and "send_due" not in doc
    # Another agent cannot even see it.
    await refused(
        house.sms.CancelMessage(sms_pb2.CancelMessageRequest(message_id=queued.id), metadata=auth(unique_user())),
        grpc.StatusCode.NOT_FOUND,
        Reason.MESSAGE_NOT_FOUND,
    )


async def test_cancel_during_the_attempt_is_refused_and_the_message_is_sent_once(house: House) -> None:
    user, to = unique_user(), unique_number()
    house.set_rules(latency_ms=1500)
    msg = await send(house, user, to, "too late to cancel")
    worker = asyncio.create_task(house.work())
    try:
        await status_of(house, msg.id, "sending", within=10)
        await refused(
            house.sms.CancelMessage(sms_pb2.CancelMessageRequest(message_id=msg.id), metadata=auth(user)),
            grpc.StatusCode.FAILED_PRECONDITION,
            Reason.MESSAGE_ALREADY_SENDING,
        )
    finally:
        await worker
    house.set_rules()
    await status_of(house, msg.id, "delivered")
    assert len(creates_to(house, to)) == 1
    await refused(
        house.sms.CancelMessage(sms_pb2.CancelMessageRequest(message_id=msg.id), metadata=auth(user)),
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.MESSAGE_NOT_CANCELABLE,
    )


async def test_cancel_racing_the_worker_ends_each_message_one_way(house: House) -> None:
    user = unique_user()
    numbers = [unique_number() for _ in range(100)]
    sent = [await send(house, user, to, f"race {i}") for i, to in enumerate(numbers)]

    async def cancel(msg: sms_pb2.Message) -> bool:
        try:
            await house.sms.CancelMessage(sms_pb2.CancelMessageRequest(message_id=msg.id), metadata=auth(user))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc.details()
            return False
        return True

    worker = asyncio.create_task(house.work())
    # The cancels start once the worker has sent its first message (however long it takes to get going on a
    # loaded machine), so both sides are in flight together.
    await eventually_async(
        lambda: sum(len(creates_to(house, to)) for to in numbers),
        30,
        "the worker to send a first message",
        until=lambda n: n > 0,
        interval=0.005,
    )
    outcomes = await asyncio.gather(*(cancel(m) for m in sent))
    await worker
    canceled = 0
    for msg, to, was_canceled in zip(sent, numbers, outcomes, strict=True):
        doc = await stored(house, msg.id)
        creates = len(creates_to(house, to))
        if doc["status"] == "canceled":
            assert was_canceled and creates == 0, (msg.id, creates)
            canceled += 1
        else:
            assert not was_canceled and creates == 1 and doc.get("twilio_sid"), (msg.id, doc["status"], creates)
    print(f"\ncancel racing the worker: {canceled} of {len(sent)} canceled, the rest sent once each")
    # Both outcomes happen (otherwise this proves nothing about the race).
    assert 0 < canceled < len(sent), canceled


# Retry


async def test_a_failed_message_is_retried_as_a_linked_new_message(house: House) -> None:
    user, to = unique_user(), unique_number()
    house.set_rules(outcomes={to: {"status": "failed", "error_code": 30008}})
    msg = await send(house, user, to, "try again")
    await house.work()
    await status_of(house, msg.id, "failed")
    await refused(  # a retry waits for the failure: a delivered or queued message is not retried
        house.sms.RetryMessage(
            sms_pb2.RetryMessageRequest(message_id=(await send(house, user, to, "queued")).id), metadata=auth(user)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.MESSAGE_NOT_RETRYABLE,
    )
    house.set_rules()
    request = sms_pb2.RetryMessageRequest(message_id=msg.id, request_id="retry-1")
    first = await house.sms.RetryMessage(request, metadata=auth(user))
    again = await house.sms.RetryMessage(request, metadata=auth(user))
    assert not first.duplicate and again.duplicate and again.message.id == first.message.id
    assert first.message.retry_of == msg.id and first.message.body == "try again"
    assert first.message.conversation_id == msg.conversation_id
    details = await refused(
        house.sms.RetryMessage(
            sms_pb2.RetryMessageRequest(message_id=msg.id, request_id="retry-2"), metadata=auth(user)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.MESSAGE_ALREADY_RETRIED,
    )
    assert first.message.id in details
    original = await house.sms.GetMessage(sms_pb2.GetMessageRequest(message_id=msg.id), metadata=auth(user))
    assert original.message.retried_by == first.message.id
    await house.work()
    await status_of(house, first.message.id, "delivered")


@pytest.mark.parametrize("code", [21211, 21614])
async def test_a_retry_of_a_number_that_cannot_receive_is_refused(house: House, code: int) -> None:
    user, to = unique_user(), unique_number()
    house.set_rules(create_errors={to: code})
    msg = await send(house, user, to, "nope")
    await house.work()
    await status_of(house, msg.id, "failed")
    details = await refused(
        house.sms.RetryMessage(sms_pb2.RetryMessageRequest(message_id=msg.id), metadata=auth(user)),
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.NUMBER_NOT_RETRYABLE,
    )
    assert str(code) in details


async def test_a_retry_to_a_contact_who_opted_out_is_refused(house: House) -> None:
    user, to = unique_user(), unique_number()
    house.set_rules(outcomes={to: "undelivered"})
    msg = await send(house, user, to, "before stop")
    await house.work()
    await status_of(house, msg.id, "undelivered")
    await house.ingest.RecordInbound(
        ingest_pb2.RecordInboundRequest(
            message_sid="SM" + msg.id.rjust(32, "0"), from_number=to, to_number=FROM_NUMBER, body="STOP"
        ),
        metadata=SERVICE,
    )
    await refused(
        house.sms.RetryMessage(sms_pb2.RetryMessageRequest(message_id=msg.id), metadata=auth(user)),
        grpc.StatusCode.FAILED_PRECONDITION,
        Reason.OPTED_OUT,
    )


# Encoding and segments


@pytest.mark.parametrize(
    ("body", "encoding", "segments"),
    [
        ("héllo", types_pb2.ENCODING_GSM7, 1),  # é is in GSM-7
        ("ça va", types_pb2.ENCODING_UCS2, 1),  # ç is not
        ("x" * 161, types_pb2.ENCODING_GSM7, 2),
        ("€" * 80, types_pb2.ENCODING_GSM7, 1),  # extension characters count twice: 160 septets
        ("€" * 81, types_pb2.ENCODING_GSM7, 2),
    ],
    ids=["accented-gsm", "ucs2", "161-chars", "80-euros", "81-euros"],
)
async def test_every_outbound_message_records_its_encoding_and_segments(
    house: House, body: str, encoding: int, segments: int
) -> None:
    msg = await send(house, unique_user(), unique_number(), body)
    assert (msg.encoding, msg.segments) == (encoding, segments)
    doc = await stored(house, msg.id)
    assert doc["segments"] == segments


# Pacing


@pytest.fixture(scope="module")
async def paced(mongo: EmbeddedServer, redis_server: EmbeddedServer) -> AsyncIterator[House]:
    async with running_house(house_env(mongo.uri, redis_server.uri, SMS_SENDER_MPS="10")) as running:
        yield running


async def test_pacing_holds_two_workers_to_the_senders_rate(paced: House) -> None:
    user = unique_user()
    numbers = [unique_number() for _ in range(30)]
    wanted = set(numbers)

    def creates() -> list[Any]:
        return [c for c in paced.sim.state.in_order() if c.to in wanted]

    # Two worker processes; unpaced, each would send 20 at once.
    workers = [await start_worker(paced.env, paced.res.redis) for _ in range(2)]
    try:
        start = now()
        await asyncio.gather(*(send(paced, user, to, f"paced {i}") for i, to in enumerate(numbers)))
        await eventually_async(lambda: asyncio.sleep(0, creates()), 20, "30 creates", until=lambda c: len(c) == 30)
    finally:
        for worker in workers:
            worker.stop(signal.SIGTERM, timeout=20)
    times = sorted(aware(c.date_created) for c in creates())
    per_second = Counter(t.replace(microsecond=0) for t in times)
    print(
        f"\npacing at 10 segments/s over two workers: 30 creates, the last {(times[-1] - start).total_seconds():.2f} s "
        f"after the first Send, at most {max(per_second.values())} in any second at the simulator"
    )
    assert max(per_second.values()) <= 10, per_second
    # Not sooner than the rate allows (30 turns at 10 a second); the upper bound only catches turns waited for far
    # beyond their time (a loaded machine adds seconds to the Sends and the workers' start, not to the pacing).
    assert timedelta(seconds=2.9) <= times[-1] - start <= timedelta(seconds=12), times[-1] - start
    # With no worker running, the queue statistics show the sender's backlog and the time to drain it.
    waiting = [await send(paced, user, unique_number(), f"waiting {i}") for i in range(5)]
    stats = await paced.sms.GetQueueStats(sms_pb2.GetQueueStatsRequest(), metadata=auth(unique_user(), "admin"))
    [backlog] = [s for s in stats.senders if s.sender == FROM_NUMBER]
    assert (backlog.messages, backlog.segments, backlog.segments_per_second) == (5, 5, 10.0)
    assert backlog.drain_time.ToTimedelta() == timedelta(seconds=0.5)
    for msg in waiting:
        await paced.sms.CancelMessage(sms_pb2.CancelMessageRequest(message_id=msg.id), metadata=auth(user))


async def test_a_turn_further_off_than_a_run_may_wait_defers_the_job_and_stays_cancelable(paced: House) -> None:
    user = unique_user()
    numbers = [unique_number() for _ in range(8)]
    # Ten segments each at 10 a second: the k-th turn is about k seconds off, and a run waits at most 5 s in place,
    # so the last turns are kept on their messages and their jobs deferred.
    sent = [await send(paced, user, to, f"{i} " + "x" * 1528) for i, to in enumerate(numbers)]
    assert {m.segments for m in sent} == {10}

    async def deferred() -> list[dict[str, Any]]:
        docs = [await stored(paced, m.id) for m in sent]
        return [d for d in docs if d.get("paced_until") and d["status"] == "queued"]

    worker = asyncio.create_task(paced.work())
    try:
        waiting = await eventually_async(deferred, 10, "a turn kept on its message", until=bool)
        last = max(waiting, key=lambda d: d["paced_until"])
        assert last["send_due"] == last["paced_until"]
        resp = await paced.sms.CancelMessage(
            sms_pb2.CancelMessageRequest(message_id=str(last["_id"])), metadata=auth(user)
        )
        assert resp.message.status == types_pb2.MESSAGE_STATUS_CANCELED
    finally:
        await worker
    creates = {c.to: aware(c.date_created) for c in paced.sim.state.in_order() if c.to in set(numbers)}
    assert set(creates) == set(numbers) - {last["to"]}
    # The deferred ones went at their turns: the sixth turn is over five seconds after the first.
    assert max(creates.values()) - min(creates.values()) >= timedelta(seconds=5)
    for doc in waiting:
        if doc["_id"] != last["_id"]:
            assert creates[doc["to"]] >= aware(doc["paced_until"]) - timedelta(milliseconds=50)
    canceled = await stored(paced, str(last["_id"]))
    assert canceled["status"] == "canceled" and "send_due" not in canceled and not canceled.get("paced_until")


# Quiet hours


def quiet_window_around_now(zone: str) -> tuple[str, datetime]:
    """SMS_QUIET_HOURS from an hour ago to an hour ahead in `zone`, and the end as a UTC time."""
    local = datetime.now(ZoneInfo(zone)).replace(second=0, microsecond=0)
    start, end = local - timedelta(hours=1), local + timedelta(hours=1)
    return f"{start:%H:%M}-{end:%H:%M}", end.astimezone(UTC)


async def test_quiet_hours_defer_a_send_to_the_next_opening(
    mongo: EmbeddedServer, redis_server: EmbeddedServer
) -> None:
    window, opening = quiet_window_around_now(NEW_YORK)
    async with running_house(house_env(mongo.uri, redis_server.uri, SMS_QUIET_HOURS=window)) as house:
        agent, to = unique_user(), new_york_number()
        msg = await send(house, agent, to, "at night")
        assert msg.status == types_pb2.MESSAGE_STATUS_SCHEDULED
        assert msg.schedule_reason == types_pb2.SCHEDULE_REASON_QUIET_HOURS
        assert msg.scheduled_time.ToDatetime(tzinfo=UTC) == opening
        # A send later that falls in quiet hours waits for their end too.
        later = await send(house, agent, to, "later", send_at=ts(now() + timedelta(minutes=10)))
        assert later.schedule_reason == types_pb2.SCHEDULE_REASON_QUIET_HOURS
        # Agents may not override; an admin may.
        await refused(
            send(house, agent, to, "now!", ignore_quiet_hours=True),
            grpc.StatusCode.PERMISSION_DENIED,
            Reason.QUIET_HOURS_OVERRIDE_NOT_ALLOWED,
        )
        urgent = await send(house, unique_user(), new_york_number(), "urgent", role="admin", ignore_quiet_hours=True)
        assert urgent.status == types_pb2.MESSAGE_STATUS_QUEUED
        assert not urgent.HasField("scheduled_time")
        # A conversation set to a zone twelve hours away is outside the window: it goes now.
        update = sms_pb2.UpdateConversationRequest(
            conversation=types_pb2.Conversation(id=msg.conversation_id, time_zone="Asia/Tokyo"),
            update_mask=FieldMask(paths=["time_zone"]),
        )
        resp = await house.sms.UpdateConversation(update, metadata=auth(agent))
        assert resp.conversation.time_zone == "Asia/Tokyo"
        tokyo_local = datetime.now(ZoneInfo("Asia/Tokyo")).time()
        # Tokyo is 13 or 14 hours ahead of New York: its time of day is outside a window of two hours around New
        # York's, whatever the hour (the window may wrap past midnight; the product's check says so).
        assert not QuietHours.parse(window).is_quiet(tokyo_local)
        went = await send(house, agent, to, "daytime in Tokyo")
        assert went.status == types_pb2.MESSAGE_STATUS_QUEUED
        update.conversation.time_zone = "Mars/Olympus_Mons"
        await refused(
            house.sms.UpdateConversation(update, metadata=auth(agent)),
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.INVALID_ARGUMENT,
        )
        stats = await house.sms.GetQueueStats(sms_pb2.GetQueueStatsRequest(), metadata=auth(unique_user(), "admin"))
        assert stats.scheduled == 2
