"""Bounded input (server/limits.py): every request field over its bound, malformed or out-of-range tokens and
timestamps, short error texts, and the event log and subscriber queues bounded in bytes. Real server processes."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from bson import ObjectId
from google.protobuf.message import Message as ProtoMessage
from google.protobuf.timestamp_pb2 import Timestamp
from redis.asyncio import Redis
from sms.v1 import ingest_pb2, ingest_pb2_grpc, sms_pb2, sms_pb2_grpc, types_pb2

from server import limits
from server.config import Config, ConfigError
from server.documents import params_of
from server.errors import error_reason
from server.events import F_DATA, F_GAP, EventLog
from server.reasons import Reason
from tests.support.identities import auth, unique_number, unique_user
from tests.support.launch import start_server
from tests.support.polling import eventually_async

OUR_NUMBER = "+15005550006"
SERVICE = auth("bridge", "service")
# The longest error text any refusal here may carry: the bound's wording plus a short quote, never the input.
MAX_DETAILS = 200


def sid() -> str:
    return "SM" + uuid.uuid4().hex


def over(n: int) -> str:
    """A string one byte over `n` bytes, made of two-byte characters where it can (bytes, not characters, count)."""
    return "é" * (n // 2) + "x" * (n % 2 + 1)


def url(n: int) -> str:
    """An https URL of exactly `n` bytes."""
    head = "https://media.example/"
    return head + "a" * (n - len(head))


def ts(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


def refused(err: grpc.aio.AioRpcError, field: str, reason: Reason | None = None) -> None:
    """INVALID_ARGUMENT naming `field` (or one of its items), with a short text and, when given, `reason`."""
    details = err.details() or ""
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), details[:300])
    assert details.startswith((f"{field}:", f"{field}[")), details[:300]
    assert len(details) <= MAX_DETAILS, details[:300]
    if reason is not None:
        assert error_reason(err) == reason.value


def send_request(**fields: Any) -> sms_pb2.SendRequest:
    base: dict[str, Any] = {"to": unique_number(), "body": "hi", "request_id": uuid.uuid4().hex}
    return sms_pb2.SendRequest(**{**base, **fields})


def inbound_request(**fields: Any) -> ingest_pb2.RecordInboundRequest:
    base: dict[str, Any] = {"message_sid": sid(), "from_number": unique_number(), "to_number": OUR_NUMBER}
    return ingest_pb2.RecordInboundRequest(**{**base, **fields})


def page_token(kind: str, ms: int, key: str) -> str:
    """A token in the server's own encoding (server/paging.py), so only its contents are wrong."""
    raw = json.dumps([kind, ms, key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.fixture(scope="module")
async def redis(base_env: dict[str, str]) -> AsyncIterator[Redis]:
    client = Redis.from_url(base_env["REDIS_URL"])
    yield client
    await client.aclose()


# ---------------------------------------------------------------------------------------------------------
# Every string, repeated and map field and every timestamp of every request, found from the descriptors: a field
# added without a bound fails here.

HUGE = "x" * 100_000  # over every string bound


def base_requests() -> dict[str, tuple[ProtoMessage, str]]:
    """A request each RPC accepts (up to NOT_FOUND or FAILED_PRECONDITION), and the role that calls it."""
    hour_ago = ts(int(time.time()) - 3600)
    return {
        "Send": (send_request(), "agent"),
        "GetMessage": (sms_pb2.GetMessageRequest(message_id=str(ObjectId())), "agent"),
        "GetConversation": (sms_pb2.GetConversationRequest(conversation_id="c" + "0" * 24), "agent"),
        "ListConversations": (sms_pb2.ListConversationsRequest(), "agent"),
        "SearchMessages": (sms_pb2.SearchMessagesRequest(query="hello"), "agent"),
        "ListMessages": (sms_pb2.ListMessagesRequest(conversation_id="c" + "0" * 24), "agent"),
        "MarkConversationRead": (sms_pb2.MarkConversationReadRequest(conversation_id="c" + "0" * 24), "agent"),
        "Subscribe": (sms_pb2.SubscribeRequest(), "agent"),
        "GetQueueStats": (sms_pb2.GetQueueStatsRequest(), "admin"),
        "SyncFromTwilio": (sms_pb2.SyncFromTwilioRequest(start_time=hour_ago), "admin"),
        "UpdateConversation": (
            sms_pb2.UpdateConversationRequest(conversation=types_pb2.Conversation(id="c" + "0" * 24)),
            "agent",
        ),
        "AssignConversation": (
            sms_pb2.AssignConversationRequest(conversation_id="c" + "0" * 24, assignee="someone"),
            "admin",
        ),
        "AddNote": (sms_pb2.AddNoteRequest(conversation_id="c" + "0" * 24, body="note"), "agent"),
        "GetInboxSummary": (sms_pb2.GetInboxSummaryRequest(), "agent"),
        "CancelMessage": (sms_pb2.CancelMessageRequest(message_id=str(ObjectId())), "agent"),
        "RetryMessage": (sms_pb2.RetryMessageRequest(message_id=str(ObjectId())), "agent"),
        "CreateTemplate": (
            sms_pb2.CreateTemplateRequest(template=types_pb2.Template(display_name="t", body="b")),
            "agent",
        ),
        "ListTemplates": (sms_pb2.ListTemplatesRequest(), "agent"),
        "UpdateTemplate": (sms_pb2.UpdateTemplateRequest(template=types_pb2.Template(id="t" + "0" * 24)), "agent"),
        "DeleteTemplate": (sms_pb2.DeleteTemplateRequest(template_id="t" + "0" * 24), "agent"),
        "RecordInbound": (inbound_request(), "service"),
        "RecordStatus": (ingest_pb2.RecordStatusRequest(message_sid=sid(), message_status="sent"), "service"),
    }


def bounded_fields() -> list[tuple[str, str]]:
    """(method, field) for every field of every request of both services that has a maximum."""
    found = []
    for module in (sms_pb2, ingest_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                for fd in method.input_type.fields:
                    timestamp = fd.message_type is not None and fd.message_type.full_name == "google.protobuf.Timestamp"
                    if fd.is_repeated or fd.type == fd.TYPE_STRING or timestamp:
                        found.append((method.name, fd.name))
    return found


def overfill(request: ProtoMessage, name: str) -> None:
    """Puts one value over its bound into field `name` of `request`."""
    fd = request.DESCRIPTOR.fields_by_name[name]
    value = getattr(request, name)
    if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
        value["Key"] = HUGE
    elif fd.is_repeated and fd.type == fd.TYPE_STRING:
        value.append(HUGE)
    elif fd.is_repeated:
        value.add(url=HUGE)  # Media, the one repeated message of a request
    elif fd.type == fd.TYPE_STRING:
        setattr(request, name, HUGE)
    else:
        value.CopyFrom(ts(10**12))


async def call(channel: grpc.aio.Channel, method: str, request: ProtoMessage, role: str) -> None:
    """Calls `method` with `request` as a fresh user of `role`; raises the call's error."""
    md = auth(unique_user(role), role)
    if method in ("RecordInbound", "RecordStatus"):
        await getattr(ingest_pb2_grpc.SmsIngestServiceStub(channel), method)(request, metadata=md)
    elif isinstance(request, sms_pb2.SubscribeRequest):
        stream = sms_pb2_grpc.SmsServiceStub(channel).Subscribe(request, metadata=md)
        try:
            await stream.read()
        finally:
            stream.cancel()
    else:
        await getattr(sms_pb2_grpc.SmsServiceStub(channel), method)(request, metadata=md)


@pytest.mark.parametrize(("method", "name"), bounded_fields())
async def test_every_request_field_has_a_bound(channel: grpc.aio.Channel, method: str, name: str) -> None:
    request, role = base_requests()[method]
    overfill(request, name)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(channel, method, request, role)
    refused(err.value, name)


# ---------------------------------------------------------------------------------------------------------
# Send


@pytest.mark.parametrize(
    ("field", "fields"),
    [
        ("to", {"to": "+1 415 555 0100" + " " * limits.ADDRESS_BYTES}),
        ("body", {"body": "x" * (limits.BODY_CHARS + 1)}),
        ("media_urls", {"media_urls": [url(100)] * (limits.MEDIA_COUNT + 1)}),
        ("media_urls", {"media_urls": [url(100), url(limits.URL_BYTES + 1)]}),
        ("contact_id", {"contact_id": over(limits.CONTACT_ID_BYTES)}),
        ("request_id", {"request_id": over(limits.REQUEST_ID_BYTES)}),
    ],
)
async def test_send_fields_over_their_bounds(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, db: Any, field: str, fields: dict[str, Any]
) -> None:
    request = send_request(**fields)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sms.Send(request, metadata=auth(unique_user()))
    refused(err.value, field)
    assert await db.messages.count_documents({"request_id": request.request_id}) == 0


async def test_send_at_every_bound_is_stored_whole(sms: sms_pb2_grpc.SmsServiceAsyncStub, db: Any) -> None:
    request = send_request(
        body="é" * limits.BODY_CHARS,
        media_urls=[url(limits.URL_BYTES)] * limits.MEDIA_COUNT,
        contact_id="é" * (limits.CONTACT_ID_BYTES // 2),
        request_id="r" * limits.REQUEST_ID_BYTES,
    )
    resp = await sms.Send(request, metadata=auth(unique_user()))
    stored = await db.messages.find_one({"_id": ObjectId(resp.message.id)})
    assert stored["body"] == request.body
    assert [m["url"] for m in stored["media"]] == list(request.media_urls)
    assert stored["contact_id"] == request.contact_id


async def test_the_reported_flood_is_refused_and_lists_keep_working(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, db: Any
) -> None:
    """The report: a 1.8 MB contact_id and ten 190 KB media URLs were accepted and copied into four events."""
    agent = unique_user()
    for field, fields in (
        ("contact_id", {"contact_id": "c" * 1_800_000}),
        ("media_urls", {"media_urls": [url(190_000)] * 10}),
    ):
        request = send_request(**fields)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await sms.Send(request, metadata=auth(agent))
        refused(err.value, field, Reason.INPUT_TOO_LARGE)
        assert await db.messages.count_documents({"request_id": request.request_id}) == 0
    listed = await sms.ListConversations(sms_pb2.ListConversationsRequest(page_size=500), metadata=auth(agent, "admin"))
    assert all(len(c.contact_id) <= limits.CONTACT_ID_BYTES for c in listed.conversations)


async def test_error_texts_quote_only_a_prefix(sms: sms_pb2_grpc.SmsServiceAsyncStub) -> None:
    """A value within its bound but wrong is named in the error by a short prefix only."""
    cases = [
        ("to", send_request(to="+1 (200) 555-0100" + "-" * 100)),  # parses, but no such number
        ("media_urls", send_request(media_urls=["ftp://" + "f" * 2000])),
    ]
    for field, request in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await sms.Send(request, metadata=auth(unique_user()))
        refused(err.value, field)
        for filler in "-f":
            assert filler * (limits.QUOTE_CHARS + 1) not in (err.value.details() or "")


# ---------------------------------------------------------------------------------------------------------
# Ids and tokens of the reading calls


async def test_ids_over_their_bound(sms: sms_pb2_grpc.SmsServiceAsyncStub) -> None:
    agent = auth(unique_user())
    long_id = "c" * (limits.ID_BYTES + 1)
    calls: list[tuple[str, Awaitable[Any]]] = [
        ("message_id", sms.GetMessage(sms_pb2.GetMessageRequest(message_id=long_id), metadata=agent)),
        (
            "conversation_id",
            sms.GetConversation(sms_pb2.GetConversationRequest(conversation_id=long_id), metadata=agent),
        ),
        (
            "conversation_id",
            sms.MarkConversationRead(sms_pb2.MarkConversationReadRequest(conversation_id=long_id), metadata=agent),
        ),
        ("conversation_id", sms.ListMessages(sms_pb2.ListMessagesRequest(conversation_id=long_id), metadata=agent)),
    ]
    for field, call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        refused(err.value, field, Reason.INPUT_TOO_LARGE)
    stream = sms.Subscribe(sms_pb2.SubscribeRequest(conversation_id=long_id), metadata=agent)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream.read()
    refused(err.value, "conversation_id", Reason.INPUT_TOO_LARGE)


@pytest.mark.parametrize(
    "token",
    [
        page_token("conversations", 10**20, "c1"),  # the report: OSError and a traceback per call
        page_token("conversations", -(10**15), "c1"),
        page_token("conversations", 1_700_000_000_000, "k" * 2000),  # well formed, but over the bound
    ],
)
async def test_page_tokens_out_of_range_or_too_long(sms: sms_pb2_grpc.SmsServiceAsyncStub, token: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sms.ListConversations(sms_pb2.ListConversationsRequest(page_token=token), metadata=auth(unique_user()))
    refused(err.value, "page_token")


async def test_message_page_token_out_of_range(sms: sms_pb2_grpc.SmsServiceAsyncStub) -> None:
    agent = unique_user()
    sent = await sms.Send(send_request(), metadata=auth(agent))
    request = sms_pb2.ListMessagesRequest(
        conversation_id=sent.message.conversation_id, page_token=page_token("messages", 10**20, sent.message.id)
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sms.ListMessages(request, metadata=auth(agent))
    refused(err.value, "page_token", Reason.INVALID_PAGE_TOKEN)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("1" * 4300 + "-0", Reason.INPUT_TOO_LARGE),  # the report: int() refuses 4,300 digits (ValueError)
        ("1" * 30 + "-0", Reason.INVALID_RESUME_TOKEN),
        ("18446744073709551616-0", Reason.INVALID_RESUME_TOKEN),  # beyond Redis's range
    ],
)
async def test_resume_tokens_malformed_or_out_of_range(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, token: str, reason: Reason
) -> None:
    stream = sms.Subscribe(sms_pb2.SubscribeRequest(resume_token=token), metadata=auth(unique_user()))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stream.read()
    refused(err.value, "resume_token", reason)


async def test_the_largest_stream_id_gets_a_resync(sms: sms_pb2_grpc.SmsServiceAsyncStub) -> None:
    """The report: Redis's largest id as a token answered "event log unavailable"; it is ahead of the log."""
    top = f"{2**64 - 1}-{2**64 - 1}"
    stream = sms.Subscribe(sms_pb2.SubscribeRequest(resume_token=top), metadata=auth(unique_user()))
    first = await asyncio.wait_for(stream.read(), 10)
    assert isinstance(first, sms_pb2.SubscribeResponse)
    assert first.WhichOneof("response") == "resync_required", first
    assert "ahead" in first.resync_required.reason
    stream.cancel()


# ---------------------------------------------------------------------------------------------------------
# SmsIngestService


@pytest.mark.parametrize(
    ("field", "fields"),
    [
        ("message_sid", {"message_sid": over(limits.ID_BYTES)}),
        ("account_sid", {"account_sid": over(limits.ID_BYTES)}),
        ("messaging_service_sid", {"messaging_service_sid": over(limits.ID_BYTES)}),
        ("from_number", {"from_number": over(limits.ADDRESS_BYTES)}),
        ("to_number", {"to_number": over(limits.ADDRESS_BYTES)}),
        ("body", {"body": over(limits.INBOUND_BODY_BYTES)}),
        ("media", {"media": [types_pb2.Media(url=url(100))] * (limits.MEDIA_COUNT + 1)}),
        ("media", {"media": [types_pb2.Media(url=url(limits.URL_BYTES + 1))]}),
        ("media", {"media": [types_pb2.Media(url=url(100), content_type=over(limits.CONTENT_TYPE_BYTES))]}),
        ("params", {"params": {f"P{i}": "" for i in range(limits.PARAMS_COUNT + 1)}}),
        ("params", {"params": {over(limits.PARAM_KEY_BYTES): "v"}}),
        ("params", {"params": {"AddOns": over(limits.PARAMS_BYTES)}}),
        ("params", {"params": {f"P{i}": "v" * 1000 for i in range(66)}}),  # each small, too much together
        ("receive_time", {"receive_time": ts(10**12)}),
        ("receive_time", {"receive_time": ts(-1)}),
        ("receive_time", {"receive_time": ts(1_700_000_000, -1)}),
    ],
)
async def test_record_inbound_fields_over_their_bounds(
    ingest: ingest_pb2_grpc.SmsIngestServiceAsyncStub, db: Any, field: str, fields: dict[str, Any]
) -> None:
    request = inbound_request(**fields)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest.RecordInbound(request, metadata=SERVICE)
    refused(err.value, field)
    assert await db.messages.count_documents({"twilio_sid": request.message_sid}) == 0


async def test_record_inbound_at_every_bound_is_stored_whole(
    ingest: ingest_pb2_grpc.SmsIngestServiceAsyncStub, db: Any
) -> None:
    media = [types_pb2.Media(url=url(limits.URL_BYTES), content_type="t" * limits.CONTENT_TYPE_BYTES)]
    keys = [f"K{i:03d}" + "k" * (limits.PARAM_KEY_BYTES - 4) for i in range(limits.PARAMS_COUNT)]
    room = limits.PARAMS_BYTES - sum(len(k) for k in keys)
    params = {k: "v" * (room // len(keys)) for k in keys}
    request = inbound_request(
        body="b" * limits.INBOUND_BODY_BYTES,
        media=media * limits.MEDIA_COUNT,
        params=params,
        receive_time=ts(int(limits.TIME_MAX.timestamp())),
    )
    resp = await ingest.RecordInbound(request, metadata=SERVICE)
    assert not resp.duplicate
    stored = await db.messages.find_one({"twilio_sid": request.message_sid})
    assert stored["body"] == request.body
    assert len(stored["media"]) == limits.MEDIA_COUNT
    assert params_of(stored) == params


@pytest.mark.parametrize(
    ("field", "fields"),
    [
        ("message_sid", {"message_sid": over(limits.ID_BYTES)}),
        ("message_status", {"message_status": "delivered" + " " * limits.STATUS_BYTES}),
        ("error_message", {"error_message": over(limits.ERROR_MESSAGE_BYTES)}),
        ("params", {"params": {over(limits.PARAM_KEY_BYTES): "v"}}),
        ("params", {"params": {"RawDlrDoneDate": over(limits.PARAMS_BYTES)}}),
        ("status_time", {"status_time": ts(10**12)}),
        ("status_time", {"status_time": ts(1_700_000_000, 10**9)}),
    ],
)
async def test_record_status_fields_over_their_bounds(
    ingest: ingest_pb2_grpc.SmsIngestServiceAsyncStub, db: Any, field: str, fields: dict[str, Any]
) -> None:
    stored = inbound_request()
    await ingest.RecordInbound(stored, metadata=SERVICE)
    request = ingest_pb2.RecordStatusRequest(**{"message_sid": stored.message_sid, "message_status": "read", **fields})
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest.RecordStatus(request, metadata=SERVICE)
    refused(err.value, field)
    doc = await db.messages.find_one({"twilio_sid": stored.message_sid})
    assert [h["status"] for h in doc["status_history"]] == ["received"]


# ---------------------------------------------------------------------------------------------------------
# SyncFromTwilio's window


@pytest.mark.parametrize(
    ("field", "start", "end"),
    [
        ("start_time", ts(10**12), None),
        ("start_time", ts(-(10**12)), None),
        ("start_time", ts(0, -5), None),
        ("end_time", ts(1_700_000_000), ts(10**12)),
    ],
)
async def test_sync_window_out_of_range(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, field: str, start: Timestamp, end: Timestamp | None
) -> None:
    request = sms_pb2.SyncFromTwilioRequest(start_time=start)
    if end is not None:
        request.end_time.CopyFrom(end)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sms.SyncFromTwilio(request, metadata=auth(unique_user("admin"), "admin"))
    refused(err.value, field, Reason.INVALID_TIMESTAMP)


# ---------------------------------------------------------------------------------------------------------
# Events and queues in bytes


async def test_every_event_of_the_largest_message_fits_the_event_bound(
    ingest: ingest_pb2_grpc.SmsIngestServiceAsyncStub, redis: Redis, base_env: dict[str, str]
) -> None:
    """The largest inbound message the bounds allow, through every status with the longest error text."""
    stream = base_env.get("SMS_EVENT_STREAM", "sms:events")  # the session server's
    before = (await redis.xrevrange(stream, count=1) or [(b"0-0", {})])[0][0].decode()
    media = [types_pb2.Media(url=url(limits.URL_BYTES), content_type="t" * limits.CONTENT_TYPE_BYTES)]
    request = inbound_request(
        from_number="+1" + "9" * (limits.ADDRESS_BYTES - 2),
        to_number=OUR_NUMBER,
        body="é" * (limits.INBOUND_BODY_BYTES // 2),
        media=media * limits.MEDIA_COUNT,
    )
    await ingest.RecordInbound(request, metadata=SERVICE)
    statuses = [s for s in types_pb2.MessageStatus.keys() if s not in ("MESSAGE_STATUS_UNSPECIFIED",)]
    for name in statuses:
        status = name.removeprefix("MESSAGE_STATUS_").lower()
        await ingest.RecordStatus(
            ingest_pb2.RecordStatusRequest(
                message_sid=request.message_sid,
                message_status=status,
                error_code=30003,
                error_message="e" * limits.ERROR_MESSAGE_BYTES,
            ),
            metadata=SERVICE,
        )
    entries = await redis.xrange(stream, min="(" + before, max="+")
    sizes = [len(fields[F_DATA]) for _, fields in entries if F_DATA in fields]
    largest = max(sizes)
    print(f"largest event of the largest message: {largest} bytes (bound {limits.EVENT_BYTES})")
    assert largest > limits.EVENT_BYTES // 2, "the message was not near the bounds: the test proves nothing"
    assert largest <= limits.EVENT_BYTES
    # The smallest queue a subscriber may be given holds the largest event.
    Config.from_env({"SMS_SUBSCRIBER_QUEUE_BYTES": str(limits.EVENT_BYTES)})
    with pytest.raises(ConfigError):
        Config.from_env({"SMS_SUBSCRIBER_QUEUE_BYTES": str(limits.EVENT_BYTES - 1)})


async def test_an_oversized_event_becomes_a_gap_marker(redis: Redis) -> None:
    """Defence behind the input bounds: the log never takes an event over EVENT_BYTES; readers resync instead."""
    stream = f"sms:events:oversized-{uuid.uuid4().hex[:8]}"
    log = EventLog(redis, stream, 1000)
    small = types_pb2.Event(type=types_pb2.EVENT_TYPE_CONVERSATION_UPDATED, conversation=types_pb2.Conversation(id="c"))
    big = types_pb2.Event(
        type=types_pb2.EVENT_TYPE_MESSAGE_UPDATED, message=types_pb2.Message(id="m", body="x" * limits.EVENT_BYTES)
    )
    assert await log.append(big, "owner", "c") is None
    assert await log.append(small, "owner", "c") is not None
    entries = await redis.xrange(stream)
    assert [F_GAP in fields for _, fields in entries] == [True, False]
    assert all(len(fields.get(F_DATA, b"")) <= limits.EVENT_BYTES for _, fields in entries)
    await redis.delete(stream)


@dataclass
class Tight:
    addr: str
    stream: str


@pytest.fixture(scope="module")
def tight(base_env: dict[str, str]) -> Iterator[Tight]:
    """A server whose subscribers may queue 1,000 events but only 64 KiB of them."""
    stream = f"sms:events:tight-{uuid.uuid4().hex[:8]}"
    proc, addr = start_server(
        {
            **base_env,
            "SMS_EVENT_STREAM": stream,
            "SMS_SUBSCRIBER_QUEUE_SIZE": "1000",
            "SMS_SUBSCRIBER_QUEUE_BYTES": str(64 * 1024),
        }
    )
    yield Tight(addr, stream)
    proc.stop()


async def test_a_subscriber_over_its_byte_bound_resyncs(tight: Tight) -> None:
    """Big events, far fewer than the count bound: the byte bound alone makes the stalled subscriber resync."""
    media = [types_pb2.Media(url=url(limits.URL_BYTES))] * limits.MEDIA_COUNT
    contact = unique_number()
    admin = auth(unique_user("admin"), "admin")
    sends = 150  # 300 events of ~21 KB: a third of the count bound, ~6 MB
    async with (
        grpc.aio.insecure_channel(tight.addr) as ch,
        grpc.aio.insecure_channel(tight.addr, options=[("grpc.http2.bdp_probe", 0)]) as stalled_ch,
    ):
        stalled = sms_pb2_grpc.SmsServiceStub(stalled_ch).Subscribe(
            sms_pb2.SubscribeRequest(all_owners=True), metadata=admin
        )
        first = await stalled.read()
        assert isinstance(first, sms_pb2.SubscribeResponse)
        assert first.WhichOneof("response") == "heartbeat"
        ingest = ingest_pb2_grpc.SmsIngestServiceStub(ch)
        live = sms_pb2_grpc.SmsServiceStub(ch).Subscribe(sms_pb2.SubscribeRequest(all_owners=True), metadata=admin)
        live_events = 0

        async def read_live() -> None:
            nonlocal live_events
            async for response in live:
                live_events += response.WhichOneof("response") == "event"

        reader = asyncio.create_task(read_live())
        for _ in range(sends):
            await ingest.RecordInbound(inbound_request(from_number=contact, media=media), metadata=SERVICE)
        # A reading subscriber on the same server is not held back by the stalled one.
        await eventually_async(lambda: live_events >= 2 * sends, 20, "every event on the reading subscriber")
        events = 0
        started = time.monotonic()
        while time.monotonic() - started < 20:
            response = await asyncio.wait_for(stalled.read(), 10)
            assert isinstance(response, sms_pb2.SubscribeResponse)
            kind = response.WhichOneof("response")
            if kind == "resync_required":
                assert response.resync_required.reason == "slow consumer"
                break
            events += kind == "event"
        else:
            pytest.fail(f"no resync after {events} events")
        print(f"stalled subscriber: {events} events before its resync (of {2 * sends})")
        assert events < 2 * sends
        stalled.cancel()
        live.cancel()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
