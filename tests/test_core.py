"""SmsService and SmsIngestService over a real gRPC channel to a real server on SecantusDB and Valkey."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import grpc
import pytest
from sms.v1 import ingest_pb2, ingest_pb2_grpc, sms_pb2, sms_pb2_grpc, types_pb2

from server.errors import error_reason
from tests.support.identities import auth, unique_number, unique_user
from tests.support.launch import start_server

SERVICE = auth("bridge", "service")
OUR_NUMBER = "+15005550006"


async def expect_error(call: Any, code: grpc.StatusCode, reason: str | None = None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()
    if reason is not None:
        assert error_reason(info.value) == reason
    return info.value


async def send(
    sms: sms_pb2_grpc.SmsServiceStub, user: str, to: str, body: str = "hi", **kw: Any
) -> sms_pb2.SendResponse:
    resp: sms_pb2.SendResponse = await sms.Send(sms_pb2.SendRequest(to=to, body=body, **kw), metadata=auth(user))
    return resp


async def inbound(
    ingest: ingest_pb2_grpc.SmsIngestServiceStub, contact: str, body: str, sid: str | None = None, **kw: Any
) -> ingest_pb2.RecordInboundResponse:
    req = ingest_pb2.RecordInboundRequest(
        message_sid=sid or f"SM{uuid.uuid4().hex}", from_number=contact, to_number=OUR_NUMBER, body=body, **kw
    )
    resp: ingest_pb2.RecordInboundResponse = await ingest.RecordInbound(req, metadata=SERVICE)
    return resp


async def give_sid(db: Any, message_id: str) -> str:
    """Stores a Twilio sid on an outbound message, as the worker does after Twilio accepts it."""
    from bson import ObjectId

    sid = f"SM{uuid.uuid4().hex}"
    await db.messages.update_one({"_id": ObjectId(message_id)}, {"$set": {"twilio_sid": sid}})
    return sid


# Send


async def test_send_stores_queued_message_and_conversation(sms: sms_pb2_grpc.SmsServiceStub, db: Any) -> None:
    user, number = unique_user(), unique_number()
    national = f"({number[2:5]}) {number[5:8]}-{number[8:]}"
    resp = await send(sms, user, national, "hello there", contact_id="crm-42")
    msg = resp.message
    assert msg.to_number == number
    assert msg.status == types_pb2.MESSAGE_STATUS_QUEUED
    assert msg.direction == types_pb2.DIRECTION_OUTBOUND
    assert msg.owner == user and msg.contact_id == "crm-42"
    assert [h.status for h in msg.status_history] == [types_pb2.MESSAGE_STATUS_QUEUED]
    conv = (
        await sms.GetConversation(
            sms_pb2.GetConversationRequest(conversation_id=msg.conversation_id), metadata=auth(user)
        )
    ).conversation
    assert conv.contact_number == number and conv.owner == user and conv.contact_id == "crm-42"
    assert conv.message_count == 1 and conv.unread_count == 0
    assert conv.last_message_preview == "hello there"
    # Queued on arq with the message id as job id (the worker is a later issue).
    stored = await db.messages.find_one({"to": number})
    assert str(stored["_id"]) == msg.id


async def test_send_enqueues_arq_job_with_message_id(
    sms: sms_pb2_grpc.SmsServiceStub, base_env: dict[str, str]
) -> None:
    from redis.asyncio import Redis

    resp = await send(sms, unique_user(), unique_number())
    redis = Redis.from_url(base_env["REDIS_URL"])
    try:
        assert await redis.exists(f"arq:job:{resp.message.id}") == 1
    finally:
        await redis.aclose()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"to": "not a number"}, "to"),
        ({"to": "+1 415 555"}, "to"),
        ({"to": ""}, "to"),
        ({"body": ""}, "body"),
        ({"body": "x" * 1601}, "body"),
        ({"media_urls": ["ftp://example.com/a.png"]}, "media_urls"),
        ({"media_urls": [f"https://example.com/{i}.png" for i in range(11)]}, "media_urls"),
    ],
)
async def test_send_rejects_bad_input(sms: sms_pb2_grpc.SmsServiceStub, kwargs: dict[str, Any], field: str) -> None:
    args: dict[str, Any] = {"to": unique_number(), "body": "hi", **kwargs}
    err = await expect_error(
        sms.Send(sms_pb2.SendRequest(**args), metadata=auth(unique_user())), grpc.StatusCode.INVALID_ARGUMENT
    )
    assert (err.details() or "").startswith(f"{field}:")


async def test_send_media_without_body_and_1600_chars(sms: sms_pb2_grpc.SmsServiceStub) -> None:
    user = unique_user()
    mms = await send(sms, user, unique_number(), "", media_urls=["https://example.com/cat.jpg"])
    assert [m.url for m in mms.message.media] == ["https://example.com/cat.jpg"]
    long = await send(sms, user, unique_number(), "y" * 1600)
    assert len(long.message.body) == 1600


async def test_send_idempotency(sms: sms_pb2_grpc.SmsServiceStub, db: Any) -> None:
    user, number, key = unique_user(), unique_number(), uuid.uuid4().hex
    first = await send(sms, user, number, "once", request_id=key)
    again = await send(sms, user, number, "once", request_id=key)
    assert not first.duplicate and again.duplicate
    assert again.message.id == first.message.id
    assert await db.messages.count_documents({"to": number}) == 1
    await expect_error(
        send(sms, user, number, "different", request_id=key), grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED"
    )
    # The key is per user: another user's identical key is a new message.
    other = await send(sms, unique_user(), unique_number(), "once", request_id=key)
    assert other.message.id != first.message.id


async def test_concurrent_sends_with_one_key_store_one_message(sms: sms_pb2_grpc.SmsServiceStub, db: Any) -> None:
    user, number, key = unique_user(), unique_number(), uuid.uuid4().hex
    results = await asyncio.gather(*(send(sms, user, number, "race", request_id=key) for _ in range(8)))
    assert len({r.message.id for r in results}) == 1
    assert sum(not r.duplicate for r in results) == 1
    assert await db.messages.count_documents({"to": number}) == 1
    conv = await db.conversations.find_one({"contact_number": number})
    assert conv["message_count"] == 1


async def test_send_to_opted_out_contact_is_refused(
    sms: sms_pb2_grpc.SmsServiceStub, ingest: ingest_pb2_grpc.SmsIngestServiceStub
) -> None:
    user, number = unique_user(), unique_number()
    await send(sms, user, number, "first")
    await inbound(ingest, number, "  stop ")
    await expect_error(send(sms, user, number, "again"), grpc.StatusCode.FAILED_PRECONDITION, "OPTED_OUT")
    await inbound(ingest, number, "START")
    resp = await send(sms, user, number, "welcome back")
    assert resp.message.status == types_pb2.MESSAGE_STATUS_QUEUED


async def test_send_to_another_agents_contact_is_denied(sms: sms_pb2_grpc.SmsServiceStub) -> None:
    number = unique_number()
    await send(sms, unique_user(), number)
    await expect_error(
        send(sms, unique_user(), number), grpc.StatusCode.PERMISSION_DENIED, "CONVERSATION_OF_ANOTHER_AGENT"
    )


async def test_agent_claims_unassigned_inbound_conversation(
    sms: sms_pb2_grpc.SmsServiceStub, ingest: ingest_pb2_grpc.SmsIngestServiceStub
) -> None:
    number, agent = unique_number(), unique_user()
    first = await inbound(ingest, number, "hello, anyone?")
    assert first.message.owner == ""  # unassigned
    reply = await send(sms, agent, number, "I can help")
    assert reply.message.conversation_id == first.message.conversation_id
    earlier = await sms.GetMessage(sms_pb2.GetMessageRequest(message_id=first.message.id), metadata=auth(agent))
    assert earlier.message.owner == agent


# Reading and paging


async def test_paging_60_messages_25_at_a_time(sms: sms_pb2_grpc.SmsServiceStub) -> None:
    user, number = unique_user(), unique_number()
    sent: list[str] = []
    for i in range(60):
        sent.append((await send(sms, user, number, f"m{i}")).message.id)
    cid = (
        await sms.GetMessage(sms_pb2.GetMessageRequest(message_id=sent[0]), metadata=auth(user))
    ).message.conversation_id
    seen: list[str] = []
    token, pages = "", 0
    while True:
        page = await sms.ListMessages(
            sms_pb2.ListMessagesRequest(conversation_id=cid, page_size=25, page_token=token), metadata=auth(user)
        )
        seen.extend(m.id for m in page.messages)
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == list(reversed(sent))  # every message once, newest first


async def test_page_size_rules(sms: sms_pb2_grpc.SmsServiceStub) -> None:
    user = unique_user()
    await expect_error(
        sms.ListConversations(sms_pb2.ListConversationsRequest(page_size=-1), metadata=auth(user)),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_error(
        sms.ListConversations(sms_pb2.ListConversationsRequest(page_token="garbage!"), metadata=auth(user)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )
    for _ in range(3):
        await send(sms, user, unique_number())
    # The agent's own (their list also holds the unassigned conversations other tests leave).
    mine = f'assignee = "{user}"'
    big = await sms.ListConversations(
        sms_pb2.ListConversationsRequest(page_size=100_000, filter=mine), metadata=auth(user)
    )
    assert len(big.conversations) == 3 and big.next_page_token == ""


async def test_list_conversations_newest_first_with_fields(
    sms: sms_pb2_grpc.SmsServiceStub, ingest: ingest_pb2_grpc.SmsIngestServiceStub
) -> None:
    user = unique_user()
    numbers = [unique_number() for _ in range(5)]
    for n in numbers:
        await send(sms, user, n, f"to {n}", contact_id=f"contact-{n}")
    await inbound(ingest, numbers[0], "reply!")
    seen: list[sms_pb2.ListConversationsResponse] = []
    token = ""
    while True:
        page = await sms.ListConversations(
            sms_pb2.ListConversationsRequest(page_size=2, page_token=token, filter=f'assignee = "{user}"'),
            metadata=auth(user),
        )
        seen.append(page)
        token = page.next_page_token
        if not token:
            break
    convs = [c for p in seen for c in p.conversations]
    assert [c.contact_number for c in convs] == [numbers[0], *reversed(numbers[1:])]
    top = convs[0]
    assert top.last_message_preview == "reply!" and top.unread_count == 1 and top.message_count == 2
    assert top.contact_id == f"contact-{numbers[0]}" and top.owner == user and not top.opted_out
    assert top.last_message_direction == types_pb2.DIRECTION_INBOUND


async def test_mark_conversation_read(
    sms: sms_pb2_grpc.SmsServiceStub, ingest: ingest_pb2_grpc.SmsIngestServiceStub
) -> None:
    user, number = unique_user(), unique_number()
    cid = (await send(sms, user, number)).message.conversation_id
    await inbound(ingest, number, "one")
    await inbound(ingest, number, "two")
    before = await sms.GetConversation(sms_pb2.GetConversationRequest(conversation_id=cid), metadata=auth(user))
    assert before.conversation.unread_count == 2
    after = await sms.MarkConversationRead(
        sms_pb2.MarkConversationReadRequest(conversation_id=cid), metadata=auth(user)
    )
    assert after.conversation.unread_count == 0


async def test_missing_ids_and_unknown_ids(sms: sms_pb2_grpc.SmsServiceStub) -> None:
    user = unique_user()
    await expect_error(
        sms.GetMessage(sms_pb2.GetMessageRequest(), metadata=auth(user)), grpc.StatusCode.INVALID_ARGUMENT
    )
    await expect_error(
        sms.GetMessage(sms_pb2.GetMessageRequest(message_id="nope"), metadata=auth(user)),
        grpc.StatusCode.NOT_FOUND,
        "MESSAGE_NOT_FOUND",
    )
    await expect_error(
        sms.ListMessages(sms_pb2.ListMessagesRequest(conversation_id="c0"), metadata=auth(user)),
        grpc.StatusCode.NOT_FOUND,
        "CONVERSATION_NOT_FOUND",
    )


# Access


async def test_auth_is_required_and_checked(
    sms: sms_pb2_grpc.SmsServiceStub, ingest: ingest_pb2_grpc.SmsIngestServiceStub
) -> None:
    req = sms_pb2.ListConversationsRequest()
    await expect_error(sms.ListConversations(req), grpc.StatusCode.UNAUTHENTICATED)
    await expect_error(
        sms.ListConversations(req, metadata=(("authorization", "Bearer forged.jwt.value"),)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    from server.auth import mint_token

    foreign = mint_token("another-secret-of-32-bytes-or-more!!", "eve", "admin")
    await expect_error(
        sms.ListConversations(req, metadata=(("authorization", f"Bearer {foreign}"),)), grpc.StatusCode.UNAUTHENTICATED
    )
    expired = mint_token("test-secret-not-for-production-0123456789", "eve", "agent", ttl_seconds=-10)
    await expect_error(
        sms.ListConversations(req, metadata=(("authorization", f"Bearer {expired}"),)), grpc.StatusCode.UNAUTHENTICATED
    )
    for role in ("agent", "admin"):
        await expect_error(
            ingest.RecordInbound(
                ingest_pb2.RecordInboundRequest(message_sid="SMx", from_number=unique_number(), to_number=OUR_NUMBER),
                metadata=auth("u", role),
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "ROLE_NOT_ALLOWED",
        )
    await expect_error(
        sms.GetQueueStats(sms_pb2.GetQueueStatsRequest(), metadata=auth("u", "agent")),
        grpc.StatusCode.PERMISSION_DENIED,
    )


async def test_agents_cannot_see_each_other(sms: sms_pb2_grpc.SmsServiceStub) -> None:
    alice, bob = unique_user("alice"), unique_user("bob")
    mine = (await send(sms, alice, unique_number(), "secret")).message
    await send(sms, bob, unique_number(), "bob's")
    bob_md = auth(bob)
    listed = await sms.ListConversations(sms_pb2.ListConversationsRequest(page_size=500), metadata=bob_md)
    # Bob's own, and the unassigned ones agents see by default (SMS_UNASSIGNED_VISIBLE_TO_AGENTS); never alice's.
    assert all(c.owner in (bob, "") for c in listed.conversations)
    assert mine.conversation_id not in {c.id for c in listed.conversations}
    cid = mine.conversation_id
    for call in (
        sms.GetMessage(sms_pb2.GetMessageRequest(message_id=mine.id), metadata=bob_md),
        sms.GetConversation(sms_pb2.GetConversationRequest(conversation_id=cid), metadata=bob_md),
        sms.ListMessages(sms_pb2.ListMessagesRequest(conversation_id=cid), metadata=bob_md),
        sms.MarkConversationRead(sms_pb2.MarkConversationReadRequest(conversation_id=cid), metadata=bob_md),
    ):
        await expect_error(call, grpc.StatusCode.NOT_FOUND)
    # Admins see everything.
    admin = auth("boss", "admin")
    got = await sms.GetMessage(sms_pb2.GetMessageRequest(message_id=mine.id), metadata=admin)
    assert got.message.body == "secret"


# Inbound


async def test_inbound_creates_conversation_and_dedupes(
    ingest: ingest_pb2_grpc.SmsIngestServiceStub, sms: sms_pb2_grpc.SmsServiceStub, db: Any
) -> None:
    number, sid = unique_number(), f"MM{uuid.uuid4().hex}"
    media = [types_pb2.Media(url="https://api.twilio.com/m/1", content_type="image/jpeg")]
    first = await inbound(
        ingest, number, "pic", sid=sid, media=media, num_segments=1, params={"FromCity": "SAN FRANCISCO"}
    )
    assert not first.duplicate
    assert first.message.status == types_pb2.MESSAGE_STATUS_RECEIVED
    assert first.message.direction == types_pb2.DIRECTION_INBOUND
    assert [(m.url, m.content_type) for m in first.message.media] == [("https://api.twilio.com/m/1", "image/jpeg")]
    for _ in range(9):
        again = await inbound(ingest, number, "pic", sid=sid, media=media)
        assert again.duplicate and again.message.id == first.message.id
    assert await db.messages.count_documents({"twilio_sid": sid}) == 1
    conv = await db.conversations.find_one({"contact_number": number})
    assert conv["unread_count"] == 1 and conv["message_count"] == 1 and conv["owner"] == ""
    admin = await sms.ListMessages(
        sms_pb2.ListMessagesRequest(conversation_id=conv["_id"]), metadata=auth("boss", "admin")
    )
    assert [m.id for m in admin.messages] == [first.message.id]


async def test_concurrent_inbound_replays_store_once(ingest: ingest_pb2_grpc.SmsIngestServiceStub, db: Any) -> None:
    number, sid = unique_number(), f"SM{uuid.uuid4().hex}"
    results = await asyncio.gather(*(inbound(ingest, number, "dup", sid=sid) for _ in range(10)))
    assert sum(not r.duplicate for r in results) == 1
    assert await db.messages.count_documents({"twilio_sid": sid}) == 1
    conv = await db.conversations.find_one({"contact_number": number})
    assert conv["unread_count"] == 1


@pytest.mark.parametrize("word", ["STOP", "stopall", "Unsubscribe", "CANCEL", "end", "QUIT", "revoke", "OptOut"])
async def test_opt_out_keywords(ingest: ingest_pb2_grpc.SmsIngestServiceStub, db: Any, word: str) -> None:
    number = unique_number()
    await inbound(ingest, number, word)
    assert (await db.conversations.find_one({"contact_number": number}))["opted_out"] is True
    await inbound(ingest, number, "please stop texting me")  # not alone: no change
    assert (await db.conversations.find_one({"contact_number": number}))["opted_out"] is True
    for opt_in in ("start", "UNSTOP", "Yes"):
        await inbound(ingest, number, word)
        await inbound(ingest, number, opt_in)
        assert (await db.conversations.find_one({"contact_number": number}))["opted_out"] is False


async def test_inbound_requires_sid_and_numbers(ingest: ingest_pb2_grpc.SmsIngestServiceStub) -> None:
    await expect_error(
        ingest.RecordInbound(
            ingest_pb2.RecordInboundRequest(from_number="+14155550100", to_number=OUR_NUMBER), metadata=SERVICE
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_error(
        ingest.RecordInbound(
            ingest_pb2.RecordInboundRequest(message_sid="SM1", to_number=OUR_NUMBER), metadata=SERVICE
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


# Status


async def test_status_moves_forward_only_with_shuffled_duplicates(
    sms: sms_pb2_grpc.SmsServiceStub, ingest: ingest_pb2_grpc.SmsIngestServiceStub, db: Any
) -> None:
    user = unique_user()
    rng = random.Random(7)
    cases = []
    for final in ("delivered", "undelivered", "failed"):
        for _ in range(4):
            msg = (await send(sms, user, unique_number())).message
            sid = await give_sid(db, msg.id)
            statuses = ["sending", "sent", final] * 3 + ["queued"]
            rng.shuffle(statuses)
            cases.append((msg.id, sid, final, statuses))
    for _, sid, _final, statuses in cases:
        for s in statuses:
            code = 30003 if s in ("undelivered", "failed") else 0
            await ingest.RecordStatus(
                ingest_pb2.RecordStatusRequest(message_sid=sid, message_status=s, error_code=code), metadata=SERVICE
            )
    for mid, _, final, statuses in cases:
        got = (await sms.GetMessage(sms_pb2.GetMessageRequest(message_id=mid), metadata=auth(user))).message
        assert types_pb2.MessageStatus.Name(got.status) == f"MESSAGE_STATUS_{final.upper()}"
        history = [types_pb2.MessageStatus.Name(h.status) for h in got.status_history]
        assert sorted(history) == sorted({f"MESSAGE_STATUS_{s.upper()}" for s in statuses})  # each once
        if final != "delivered":
            assert got.error_code == 30003


async def test_terminal_status_is_sticky_and_late_callbacks_are_kept(
    sms: sms_pb2_grpc.SmsServiceStub, ingest: ingest_pb2_grpc.SmsIngestServiceStub, db: Any
) -> None:
    user = unique_user()
    msg = (await send(sms, user, unique_number())).message
    sid = await give_sid(db, msg.id)

    async def status(s: str, code: int = 0) -> ingest_pb2.RecordStatusResponse:
        r: ingest_pb2.RecordStatusResponse = await ingest.RecordStatus(
            ingest_pb2.RecordStatusRequest(message_sid=sid, message_status=s, error_code=code), metadata=SERVICE
        )
        return r

    assert (await status("delivered")).applied
    late = await status("sent")
    assert not late.applied and late.message.status == types_pb2.MESSAGE_STATUS_DELIVERED
    other_terminal = await status("failed", 30008)
    assert not other_terminal.applied and other_terminal.message.status == types_pb2.MESSAGE_STATUS_DELIVERED
    assert other_terminal.message.error_code == 0
    kept = [(h.status, h.applied) for h in other_terminal.message.status_history]
    assert (types_pb2.MESSAGE_STATUS_SENT, False) in kept
    assert (types_pb2.MESSAGE_STATUS_FAILED, False) in kept
    assert not (await status("delivered")).applied  # a repeat


async def test_status_errors_and_unsubscribed(
    sms: sms_pb2_grpc.SmsServiceStub, ingest: ingest_pb2_grpc.SmsIngestServiceStub, db: Any
) -> None:
    await expect_error(
        ingest.RecordStatus(
            ingest_pb2.RecordStatusRequest(message_sid="SMunknown", message_status="sent"), metadata=SERVICE
        ),
        grpc.StatusCode.NOT_FOUND,
        "UNKNOWN_MESSAGE_SID",
    )
    user, number = unique_user(), unique_number()
    msg = (await send(sms, user, number)).message
    sid = await give_sid(db, msg.id)
    await expect_error(
        ingest.RecordStatus(ingest_pb2.RecordStatusRequest(message_sid=sid, message_status="lost"), metadata=SERVICE),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_STATUS",
    )
    resp = await ingest.RecordStatus(
        ingest_pb2.RecordStatusRequest(
            message_sid=sid, message_status="failed", error_code=21610, error_message="unsubscribed"
        ),
        metadata=SERVICE,
    )
    assert resp.message.status == types_pb2.MESSAGE_STATUS_FAILED and resp.message.error_code == 21610
    conv = await sms.GetConversation(
        sms_pb2.GetConversationRequest(conversation_id=msg.conversation_id), metadata=auth(user)
    )
    assert conv.conversation.opted_out


async def test_idempotency_key_belongs_to_the_sender_not_the_owner(sms: sms_pb2_grpc.SmsServiceStub, db: Any) -> None:
    agent, number, key = unique_user(), unique_number(), uuid.uuid4().hex
    await send(sms, agent, number, "agent's first")
    admin = auth("boss-" + uuid.uuid4().hex[:6], "admin")
    req = sms_pb2.SendRequest(to=number, body="from the admin", request_id=key)
    first = await sms.Send(req, metadata=admin)
    again = await sms.Send(req, metadata=admin)
    assert first.message.owner == agent  # the conversation keeps its owner
    assert again.duplicate and again.message.id == first.message.id
    assert not (await send(sms, agent, number, "agent reuses the key", request_id=key)).duplicate
    assert await db.messages.count_documents({"to": number}) == 3


async def test_replay_finishes_an_inbound_abandoned_half_way(
    ingest: ingest_pb2_grpc.SmsIngestServiceStub, db: Any, base_env: dict[str, str]
) -> None:
    """A server that died after storing a STOP but before applying it: Twilio's retry applies it, once."""
    from datetime import UTC, datetime, timedelta

    from redis.asyncio import Redis

    number = unique_number()
    first = (await inbound(ingest, number, "hello")).message
    sid, long_ago = f"SM{uuid.uuid4().hex}", datetime.now(UTC) - timedelta(minutes=5)
    await db.messages.insert_one(
        {
            "conversation_id": first.conversation_id,
            "direction": "inbound",
            "from": number,
            "to": OUR_NUMBER,
            "body": "STOP",
            "media": [],
            "status": "received",
            "owner": "",
            "twilio_sid": sid,
            "status_history": [{"status": "received", "time": long_ago, "applied": True}],
            "attempts": 0,
            "pending": long_ago,
            "created": long_ago,
            "updated": long_ago,
        }
    )
    replay = await inbound(ingest, number, "STOP", sid=sid)
    assert replay.duplicate
    conv = await db.conversations.find_one({"_id": first.conversation_id})
    assert conv["opted_out"] is True and conv["unread_count"] == 2 and conv["message_count"] == 2
    assert "pending" not in await db.messages.find_one({"twilio_sid": sid})
    redis = Redis.from_url(base_env["REDIS_URL"])
    try:
        events = await redis.xrevrange("sms:events", count=50)
    finally:
        await redis.aclose()
    created = [f for _, f in events if f[b"conversation_id"].decode() == first.conversation_id]
    assert any(replay.message.id.encode() in f[b"data"] for f in created)
    again = await inbound(ingest, number, "STOP", sid=sid)
    assert again.duplicate
    assert (await db.conversations.find_one({"_id": first.conversation_id}))["unread_count"] == 2


async def test_replies_land_in_the_conversation_of_the_send(
    sms: sms_pb2_grpc.SmsServiceStub, ingest: ingest_pb2_grpc.SmsIngestServiceStub
) -> None:
    user, number = unique_user(), unique_number()
    sent = (await send(sms, user, number, "question?")).message
    national = f"({number[2:5]}) {number[5:8]}-{number[8:]}"
    reply = await ingest.RecordInbound(
        ingest_pb2.RecordInboundRequest(
            message_sid=f"SM{uuid.uuid4().hex}", from_number=national, to_number="500-555-0006", body="answer"
        ),
        metadata=SERVICE,
    )
    assert reply.message.conversation_id == sent.conversation_id
    assert reply.message.owner == user


async def test_messaging_service_conversations_meet_their_replies(base_env: dict[str, str]) -> None:
    service_sid = "MG" + "1" * 32
    env = {k: v for k, v in base_env.items() if k != "TWILIO_FROM_NUMBER"}
    proc, addr = start_server({**env, "TWILIO_MESSAGING_SERVICE_SID": service_sid})
    try:
        async with grpc.aio.insecure_channel(addr) as ch:
            user, number = unique_user(), unique_number()
            sent = (await send(sms_pb2_grpc.SmsServiceStub(ch), user, number, "via the service")).message
            reply = await ingest_pb2_grpc.SmsIngestServiceStub(ch).RecordInbound(
                ingest_pb2.RecordInboundRequest(
                    message_sid=f"SM{uuid.uuid4().hex}",
                    from_number=number,
                    to_number="+15005550009",
                    messaging_service_sid=service_sid,
                    body="reply",
                ),
                metadata=SERVICE,
            )
            assert reply.message.conversation_id == sent.conversation_id
    finally:
        proc.stop()
