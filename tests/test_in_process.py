"""The rules of sending, status and idempotency, run in-process: server, bridge and simulator in this event loop,
arq's Worker in burst mode. The same rules are also tested end to end over real processes (test_worker.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from bson import ObjectId
from sms.v1 import ingest_pb2, sms_pb2, types_pb2

from server.embedded import EmbeddedServer
from server.errors import error_reason
from server.gateway import PAGE_BYTES
from server.reasons import Reason
from server.timeutil import now
from server.worker.reconcile import reconcile_once
from tests.support.identities import auth, unique_number, unique_user
from tests.support.in_process import FROM_NUMBER, House, house_env, running_house
from tests.support.polling import eventually_async

SERVICE = auth("bridge", "service")


@pytest.fixture(scope="module")
async def house(mongo: EmbeddedServer, redis_server: EmbeddedServer) -> AsyncIterator[House]:
    async with running_house(house_env(mongo.uri, redis_server.uri)) as running:
        yield running


@pytest.fixture(autouse=True)
def default_rules(house: House) -> None:
    house.set_rules()


async def send(house: House, user: str, to: str, body: str, **kw: Any) -> sms_pb2.Message:
    resp: sms_pb2.SendResponse = await house.sms.Send(sms_pb2.SendRequest(to=to, body=body, **kw), metadata=auth(user))
    return resp.message


async def stored(house: House, message_id: str) -> dict[str, Any]:
    doc = await house.res.store.get_message(message_id)
    assert doc is not None
    return dict(doc)


def creates_to(house: House, to: str) -> list[Any]:
    return [m for m in house.sim.state.in_order() if m.to == to and m.direction.startswith("outbound")]


async def test_a_send_is_created_at_twilio_once_and_delivered(house: House) -> None:
    user, to = unique_user(), unique_number()
    msg = await send(house, user, to, "hello once", request_id="r-1")
    again = await send(house, user, to, "hello once", request_id="r-1")
    assert again.id == msg.id
    await house.work()
    await house.work()  # a second worker run finds the sid and sends nothing
    assert len(creates_to(house, to)) == 1
    doc = await eventually_async(
        lambda: stored(house, msg.id), 10, "the delivered callback", until=lambda d: d["status"] == "delivered"
    )
    assert doc["twilio_sid"] == creates_to(house, to)[0].sid
    assert [h["status"] for h in doc["status_history"]][:2] == ["queued", "sending"]


async def test_a_reused_request_id_with_another_body_is_refused(house: House) -> None:
    user, to = unique_user(), unique_number()
    await send(house, user, to, "first", request_id="same")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await send(house, user, to, "second", request_id="same")
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(info.value) == Reason.REQUEST_ID_REUSED


@pytest.mark.parametrize("code", [21211, 21614])
async def test_a_permanent_twilio_error_fails_at_once_with_its_code(house: House, code: int) -> None:
    to = unique_number()
    house.set_rules(create_errors={to: code})
    msg = await send(house, unique_user(), to, "never")
    await house.work()
    doc = await stored(house, msg.id)
    assert doc["status"] == "failed"
    assert doc["error_code"] == code
    assert doc["attempts"] == 1


async def test_21610_on_create_opts_the_conversation_out_and_refuses_the_next_send(house: House) -> None:
    user, to = unique_user(), unique_number()
    house.set_rules(create_errors={to: 21610})
    msg = await send(house, user, to, "after STOP")
    await house.work()
    conv = await house.res.store.get_conversation(msg.conversation_id)
    assert conv is not None and conv["opted_out"] is True
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await send(house, user, to, "again")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(info.value) == Reason.OPTED_OUT


async def test_21610_in_a_status_callback_opts_the_conversation_out(house: House) -> None:
    user, to = unique_user(), unique_number()
    # The simulator holds the message at `sent` until the test is done: its own `delivered` callback must not
    # come first (under load it did, and a delivered message does not move to failed).
    house.set_rules(lifecycle_ms={"sent": 120_000})
    try:
        msg = await send(house, user, to, "will bounce")
        await house.work()
        doc = await stored(house, msg.id)
        resp = await house.ingest.RecordStatus(
            ingest_pb2.RecordStatusRequest(message_sid=doc["twilio_sid"], message_status="failed", error_code=21610),
            metadata=SERVICE,
        )
    finally:
        house.set_rules()
    assert resp.message.status == types_pb2.MESSAGE_STATUS_FAILED
    conv = await house.res.store.get_conversation(msg.conversation_id)
    assert conv is not None and conv["opted_out"] is True


async def test_transient_errors_are_retried_until_sent(house: House) -> None:
    to = unique_number()
    house.set_rules(burst_429=2)
    msg = await send(house, unique_user(), to, "retried")
    await house.work()
    doc = await stored(house, msg.id)
    assert doc["twilio_sid"]
    assert doc["attempts"] == 3
    assert len(creates_to(house, to)) == 1


async def test_the_reconciler_requeues_a_message_whose_job_was_lost(house: House) -> None:
    to = unique_number()
    msg = await send(house, unique_user(), to, "lost job")
    # The job vanishes (Redis lost it); the message stays QUEUED in MongoDB.
    await house.res.arq.delete(f"arq:job:{msg.id}")
    await house.res.arq.zrem(house.cfg.arq_queue, msg.id)
    await house.work()
    assert creates_to(house, to) == []
    # ...and nobody touched it for longer than the reconciler waits.
    age = timedelta(seconds=house.cfg.reconcile_age_seconds + 1)
    await house.res.store.messages.update_one({"_id": ObjectId(msg.id)}, {"$set": {"updated": now() - age}})
    assert await reconcile_once(house.cfg, house.res.gateway) == 1
    await house.work()
    assert len(creates_to(house, to)) == 1


async def test_status_moves_only_forward(house: House) -> None:
    msg = await send(house, unique_user(), unique_number(), "ranks")
    await house.work()
    sid = (await stored(house, msg.id))["twilio_sid"]
    for status, moved in (("delivered", None), ("sent", False), ("delivered", False), ("read", True)):
        resp = await house.ingest.RecordStatus(
            ingest_pb2.RecordStatusRequest(message_sid=sid, message_status=status), metadata=SERVICE
        )
        if moved is not None:
            assert resp.applied is moved, status
    doc = await stored(house, msg.id)
    assert doc["status"] == "read"


async def test_a_repeated_21610_callback_does_not_opt_out_again_after_start(house: House) -> None:
    to = unique_number()
    msg = await send(house, unique_user(), to, "will bounce once")
    await house.work()
    sid = (await stored(house, msg.id))["twilio_sid"]
    bounce = ingest_pb2.RecordStatusRequest(message_sid=sid, message_status="failed", error_code=21610)
    await house.ingest.RecordStatus(bounce, metadata=SERVICE)
    await house.ingest.RecordInbound(
        ingest_pb2.RecordInboundRequest(
            message_sid="SM" + uuid.uuid4().hex, from_number=to, to_number=FROM_NUMBER, body="START"
        ),
        metadata=SERVICE,
    )
    conv = await house.res.store.get_conversation(msg.conversation_id)
    assert conv is not None and conv["opted_out"] is False
    # Twilio retries the same callback: it is a repeat and must not undo the START.
    await house.ingest.RecordStatus(bounce, metadata=SERVICE)
    conv = await house.res.store.get_conversation(msg.conversation_id)
    assert conv is not None and conv["opted_out"] is False


async def test_a_page_of_large_messages_stays_under_the_byte_budget_and_pages_through_all(house: House) -> None:
    user, to = unique_user(), unique_number()
    # Each message near the largest Send allows: 1,600 four-byte characters and ten 2 KiB media URLs.
    body = "😀" * 1600
    media = [f"https://media.example/{i}/" + "x" * 2000 for i in range(10)]
    sent = [(await send(house, user, to, body, media_urls=media)).id for _ in range(90)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        resp = await house.sms.ListMessages(
            sms_pb2.ListMessagesRequest(
                conversation_id=(await stored(house, sent[0]))["conversation_id"], page_size=500, page_token=token
            ),
            metadata=auth(user),
        )
        assert 0 < resp.ByteSize() <= PAGE_BYTES + 64 * 1024
        seen += [m.id for m in resp.messages]
        pages += 1
        token = resp.next_page_token
        if not token:
            break
    assert pages > 1  # 90 such messages are over 2 MiB: one page of 500 would not fit
    assert sorted(seen) == sorted(sent)


async def status_events(house: House, message_id: str) -> list[int]:
    """The statuses of the message's MESSAGE_UPDATED events in the log, in order."""
    found = []
    for _, fields in await house.res.redis.xrange(house.res.cfg.event_stream):
        data = fields.get(b"data")
        if data is None:
            continue
        event = types_pb2.Event.FromString(data)
        if event.type == types_pb2.EVENT_TYPE_MESSAGE_UPDATED and event.message.id == message_id:
            found.append(event.message.status)
    return found


async def test_a_status_stored_without_its_event_is_announced_by_the_repeat_once(house: House) -> None:
    user, to = unique_user(), unique_number()
    # Twilio keeps it queued for ten minutes: no callback comes from the simulator, this test sends them.
    house.set_rules(lifecycle_ms={"queued": 600_000})
    msg = await send(house, user, to, "lost event")
    await house.work()
    doc = await house.res.store.get_message(msg.id)
    assert doc is not None and doc["status"] == "sending"
    before = await status_events(house, msg.id)
    # A process that stored `sent` and died before appending its event: the change is in the store only.
    entry = {"status": "sent", "time": now(), "applied": True}
    stored_only = await house.res.store.update_message(
        doc, {"status": "sending"}, {"$set": {"status": "sent"}, "$push": {"status_history": entry}}
    )
    assert stored_only is not None
    assert await status_events(house, msg.id) == before
    sid = doc["twilio_sid"]
    for _ in range(3):  # Twilio's retry of the callback, and two more repeats
        await house.ingest.RecordStatus(
            ingest_pb2.RecordStatusRequest(message_sid=sid, message_status="sent"), metadata=SERVICE
        )
    # The first repeat announced the change; the others found it announced.
    assert await status_events(house, msg.id) == [*before, types_pb2.MESSAGE_STATUS_SENT]
    await house.ingest.RecordStatus(
        ingest_pb2.RecordStatusRequest(message_sid=sid, message_status="delivered"), metadata=SERVICE
    )
    await house.ingest.RecordStatus(
        ingest_pb2.RecordStatusRequest(message_sid=sid, message_status="delivered"), metadata=SERVICE
    )
    sent, delivered = types_pb2.MESSAGE_STATUS_SENT, types_pb2.MESSAGE_STATUS_DELIVERED
    assert await status_events(house, msg.id) == [*before, sent, delivered]
