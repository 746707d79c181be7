"""Access and ownership (issue 10): unassigned conversations, the service role's rights, limits per user with a
retry hint, and the toll-fraud guard on destinations. Real servers: the session's process, and an in-process
stack with low limits of its own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import grpc
import pytest
from redis.asyncio import Redis
from sms.v1 import ingest_pb2_grpc, sms_pb2, sms_pb2_grpc, types_pb2

from server.embedded import EmbeddedServer
from server.errors import ResourceExhausted, retry_delay
from server.phone import check_destination
from server.quotas import STREAM_RETRY_SECONDS, SendRate
from tests.support.identities import auth, unique_number, unique_user
from tests.support.in_process import House, house_env, running_house
from tests.support.polling import eventually_async
from tests.test_core import OUR_NUMBER, expect_error, inbound
from tests.test_subscribe import Stream, close_streams, open_stream

CREATED = types_pb2.EVENT_TYPE_MESSAGE_CREATED
STREAMS, RATE, BURST = 3, 0.5, 3


async def send_as(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, user: str, role: str, to: str, body: str = "hi", **kw: Any
) -> sms_pb2.SendResponse:
    resp: sms_pb2.SendResponse = await sms.Send(sms_pb2.SendRequest(to=to, body=body, **kw), metadata=auth(user, role))
    return resp


async def get_conversation(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, user: str, role: str, cid: str
) -> types_pb2.Conversation:
    resp = await sms.GetConversation(sms_pb2.GetConversationRequest(conversation_id=cid), metadata=auth(user, role))
    return resp.conversation


async def list_messages(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, user: str, role: str, cid: str
) -> list[types_pb2.Message]:
    resp = await sms.ListMessages(sms_pb2.ListMessagesRequest(conversation_id=cid), metadata=auth(user, role))
    return list(resp.messages)


def message_ids(stream: Stream) -> set[str]:
    return {r.event.message.id for r in stream.events if r.event.WhichOneof("payload") == "message"}


def touches(stream: Stream, contact: str) -> bool:
    """Whether any event the stream got is about `contact`'s conversation."""
    return any(
        contact in (r.event.message.to_number, r.event.message.from_number, r.event.conversation.contact_number)
        for r in stream.events
    )


async def barrier(sms: sms_pb2_grpc.SmsServiceAsyncStub, stream: Stream, user: str) -> None:
    """Sends as `user` and waits for the stream to show it: everything appended before has been routed."""
    mine = (await send_as(sms, user, "agent", unique_number(), "barrier")).message.id
    await eventually_async(lambda: mine in message_ids(stream), 10, f"{user}'s own event")


# Ownership


async def test_a_conversation_an_admin_starts_stays_the_admins(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, ingest: ingest_pb2_grpc.SmsIngestServiceAsyncStub, db: Any
) -> None:
    """The admin is `admin`, the old default owner of new contacts' conversations: today's takeover."""
    number, agent = unique_number(), unique_user()
    first = (await send_as(sms, "admin", "admin", number, "your invoice is attached")).message
    assert first.owner == "admin"
    reply = (await inbound(ingest, number, "thanks, paid")).message
    assert reply.owner == "admin" and reply.conversation_id == first.conversation_id
    await expect_error(
        send_as(sms, agent, "agent", number, "hello?"),
        grpc.StatusCode.PERMISSION_DENIED,
        "CONVERSATION_OF_ANOTHER_AGENT",
    )
    await expect_error(
        sms.GetMessage(sms_pb2.GetMessageRequest(message_id=first.id), metadata=auth(agent)),
        grpc.StatusCode.NOT_FOUND,
        "MESSAGE_NOT_FOUND",
    )
    conv = await db.conversations.find_one({"_id": first.conversation_id})
    assert conv["owner"] == "admin" and conv["message_count"] == 2
    assert await db.messages.count_documents({"conversation_id": first.conversation_id, "owner": "admin"}) == 2


@pytest.fixture(scope="module")
async def hidden(mongo: EmbeddedServer, redis_server: EmbeddedServer) -> AsyncIterator[House]:
    """A stack where agents do not see unassigned conversations (the rule before issue 11; test_assignment.py
    tests the default, where they do)."""
    async with running_house(house_env(mongo.uri, redis_server.uri, SMS_UNASSIGNED_VISIBLE_TO_AGENTS="false")) as h:
        yield h


async def test_a_new_contact_is_unassigned_until_an_agent_replies(hidden: House) -> None:
    """With SMS_UNASSIGNED_VISIBLE_TO_AGENTS=false."""
    sms, ingest = api(hidden), cast("ingest_pb2_grpc.SmsIngestServiceAsyncStub", hidden.ingest)
    number, a, b, boss = unique_number(), unique_user(), unique_user(), unique_user("admin")
    # An agent asking for every owner gets their own only; the admin gets every owner's, unassigned included.
    sa, sb = open_stream(sms, a, all_owners=True), open_stream(sms, b)
    sboss = open_stream(sms, boss, "admin", all_owners=True)
    for s in (sa, sb, sboss):
        await s.started()

    first = (await inbound(ingest, number, "hello, anyone there?")).message
    cid = first.conversation_id
    assert first.owner == ""
    assert (await get_conversation(sms, boss, "admin", cid)).owner == ""
    for call, reason in (
        (sms.GetConversation(sms_pb2.GetConversationRequest(conversation_id=cid), metadata=auth(a)), "CONVERSATION"),
        (sms.ListMessages(sms_pb2.ListMessagesRequest(conversation_id=cid), metadata=auth(a)), "CONVERSATION"),
        (sms.GetMessage(sms_pb2.GetMessageRequest(message_id=first.id), metadata=auth(a)), "MESSAGE"),
    ):
        await expect_error(call, grpc.StatusCode.NOT_FOUND, f"{reason}_NOT_FOUND")
    listed = await sms.ListConversations(sms_pb2.ListConversationsRequest(), metadata=auth(a))
    assert cid not in [c.id for c in listed.conversations]
    narrowed = open_stream(sms, a, conversation_id=cid)
    await eventually_async(lambda: narrowed.error is not None, 10, "the narrowed stream's refusal")
    assert narrowed.error is not None and narrowed.error.code() == grpc.StatusCode.NOT_FOUND

    # An admin's answer leaves it unassigned: admins answer from the shared queue without taking it.
    answer = (await send_as(sms, boss, "admin", number, "we are, how can we help?")).message
    assert answer.owner == "" and (await get_conversation(sms, boss, "admin", cid)).owner == ""
    await eventually_async(lambda: {first.id, answer.id} <= message_ids(sboss), 10, "the admin's unassigned events")

    # The first agent who replies claims it, with its earlier messages; the next agent is refused.
    claim = (await send_as(sms, a, "agent", number, "I can help")).message
    assert claim.owner == a and claim.conversation_id == cid
    assert (await get_conversation(sms, a, "agent", cid)).owner == a
    history = await list_messages(sms, a, "agent", cid)
    assert [m.id for m in history] == [claim.id, answer.id, first.id]
    assert {m.owner for m in history} == {a}
    await expect_error(
        send_as(sms, b, "agent", number, "me too"), grpc.StatusCode.PERMISSION_DENIED, "CONVERSATION_OF_ANOTHER_AGENT"
    )

    # Streams follow the claim: a gets the conversation from the claim on, b never, the admin all of it.
    await eventually_async(lambda: claim.id in message_ids(sa), 10, "the claim's events on a's stream")
    await eventually_async(lambda: claim.id in message_ids(sboss), 10, "the claim's events on the admin's stream")
    assert not {first.id, answer.id} & message_ids(sa)
    conversations = [r.event.conversation for r in sa.events if r.event.WhichOneof("payload") == "conversation"]
    # The claim's change of assignee, then the reply's update: each showing a.
    assert {c.owner for c in conversations if c.id == cid} == {a}
    await barrier(sms, sb, b)
    assert not touches(sb, number)
    await close_streams(sa, sb, sboss, narrowed)


async def test_a_message_stored_as_its_conversation_was_claimed_follows_the_claim(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, ingest: ingest_pb2_grpc.SmsIngestServiceAsyncStub, db: Any
) -> None:
    """An inbound stored as unassigned whose effects ran after the claim (here: finished by Twilio's retry)."""
    number, agent = unique_number(), unique_user()
    cid = (await inbound(ingest, number, "hello")).message.conversation_id
    await send_as(sms, agent, "agent", number, "hi, Sam here")
    sid, long_ago = f"SM{uuid.uuid4().hex}", datetime.now(UTC) - timedelta(minutes=5)
    await db.messages.insert_one(
        {
            "conversation_id": cid,
            "direction": "inbound",
            "from": number,
            "to": OUR_NUMBER,
            "body": "are you still there?",
            "media": [],
            "status": "received",
            "owner": "",
            "contact_id": "",
            "twilio_sid": sid,
            "status_history": [{"status": "received", "time": long_ago, "applied": True}],
            "attempts": 0,
            "pending": long_ago,
            "created": long_ago,
            "updated": long_ago,
        }
    )
    stream = await open_stream(sms, agent).started()
    replay = (await inbound(ingest, number, "are you still there?", sid=sid)).message
    assert replay.owner == agent
    assert (await db.messages.find_one({"twilio_sid": sid}))["owner"] == agent
    await eventually_async(lambda: replay.id in message_ids(stream), 10, "the finished message's event")
    await close_streams(stream)


# The service role


async def test_the_service_role_sees_every_conversation_but_may_not_call_the_operator_methods(
    sms: sms_pb2_grpc.SmsServiceAsyncStub,
) -> None:
    crm, agent, n1, n2 = unique_user("crm"), unique_user(), unique_number(), unique_number()
    watch = await open_stream(sms, crm, "service", all_owners=True).started()
    mine = (await send_as(sms, agent, "agent", n1, "your table is booked")).message
    cid = mine.conversation_id
    assert (await get_conversation(sms, crm, "service", cid)).owner == agent
    assert [m.id for m in await list_messages(sms, crm, "service", cid)] == [mine.id]
    # It writes to an agent's conversation without taking it over, and owns what it starts.
    note = (await send_as(sms, crm, "service", n1, "reminder: tomorrow 7pm")).message
    assert note.owner == agent and (await get_conversation(sms, agent, "agent", cid)).owner == agent
    assert (await send_as(sms, crm, "service", n2, "welcome!")).message.owner == crm
    await eventually_async(lambda: {mine.id, note.id} <= message_ids(watch), 10, "every owner's events")
    await close_streams(watch)

    for call in (
        sms.GetQueueStats(sms_pb2.GetQueueStatsRequest(), metadata=auth(crm, "service")),
        sms.SyncFromTwilio(sms_pb2.SyncFromTwilioRequest(), metadata=auth(crm, "service")),
    ):
        await expect_error(call, grpc.StatusCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED")
    await sms.GetQueueStats(sms_pb2.GetQueueStatsRequest(), metadata=auth("boss", "admin"))


# The toll-fraud guard


@pytest.mark.parametrize(
    ("number", "reason", "country"),
    [
        ("+447400123456", "DESTINATION_COUNTRY_NOT_ALLOWED", "GB"),
        ("+18762101234", "DESTINATION_COUNTRY_NOT_ALLOWED", "JM"),  # +1, but Jamaica
        ("+80012345678", "DESTINATION_COUNTRY_NOT_ALLOWED", "001"),  # international freephone
        ("+19002345678", "PREMIUM_RATE_NUMBER", ""),  # US premium rate
    ],
)
async def test_send_refuses_other_countries_and_premium_numbers_by_default(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, db: Any, number: str, reason: str, country: str
) -> None:
    error = await expect_error(
        send_as(sms, unique_user(), "agent", number, "win a prize"), grpc.StatusCode.FAILED_PRECONDITION, reason
    )
    assert number[4:] not in (error.details() or "") and country in (error.details() or "")
    assert await db.conversations.count_documents({"contact_number": number}) == 0


async def test_send_accepts_canada_and_the_test_numbers(sms: sms_pb2_grpc.SmsServiceAsyncStub) -> None:
    for number in ("+15062345678", "+15005550009", unique_number()):
        assert (await send_as(sms, unique_user(), "agent", number, "hello")).message.to_number == number


def test_the_guard_is_configurable() -> None:
    for number in ("+14155550100", "+16285559999", "+15005550006", "+15005550001", "+15062345678"):
        check_destination(number, ("US", "CA"), False)
    check_destination("+447400123456", ("GB",), False)
    check_destination("+447400123456", ("*",), False)
    check_destination("+19002345678", ("US",), True)


# Limits per user: an in-process stack with low ones, and everything allowed by the guard


@pytest.fixture(scope="module")
async def limited(mongo: EmbeddedServer, redis_server: EmbeddedServer) -> AsyncIterator[House]:
    env = house_env(
        mongo.uri,
        redis_server.uri,
        SMS_MAX_STREAMS_PER_USER=str(STREAMS),
        SMS_SEND_RATE_PER_USER=str(RATE),
        SMS_SEND_BURST_PER_USER=str(BURST),
        SMS_ALLOWED_COUNTRIES="*",
        SMS_ALLOW_PREMIUM_NUMBERS="true",
    )
    async with running_house(env) as house:
        yield house


def api(house: House) -> sms_pb2_grpc.SmsServiceAsyncStub:
    """The house's SmsService stub, typed as what it is (a stub on an aio channel)."""
    return cast("sms_pb2_grpc.SmsServiceAsyncStub", house.sms)


async def answered(stream: Stream) -> Stream:
    """The stream once it got its first response or its error."""
    await eventually_async(lambda: bool(stream.responses) or stream.error is not None, 10, "the stream's answer")
    return stream


async def test_open_streams_per_user_are_limited_with_a_retry_hint(limited: House) -> None:
    a, b = unique_user(), unique_user()
    mine = [await open_stream(api(limited), a).started() for _ in range(STREAMS)]
    refused = await answered(open_stream(api(limited), a, all_owners=True))
    assert refused.error is not None and refused.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_delay(refused.error) == STREAM_RETRY_SECONDS
    others = [await open_stream(api(limited), b).started(), await open_stream(api(limited), "boss", "admin").started()]

    # Closing one frees its slot.
    await close_streams(mine.pop())

    async def reopened() -> bool:
        stream = await answered(open_stream(api(limited), a))
        if stream.error is None:
            mine.append(stream)
        return stream.error is None

    await eventually_async(reopened, 10, "a slot to be free again")
    assert len(mine) == STREAMS
    await close_streams(*mine, *others)


async def test_sends_per_user_are_rate_limited_in_redis_with_a_retry_hint(
    limited: House, redis_server: EmbeddedServer
) -> None:
    user, other = unique_user(), unique_user()
    numbers = [unique_number() for _ in range(BURST)]
    accepted = [
        await send_as(api(limited), user, "agent", n, "burst", request_id=f"r{i}") for i, n in enumerate(numbers)
    ]
    error = await expect_error(
        send_as(api(limited), user, "agent", numbers[0], "one too many"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "SEND_RATE_EXCEEDED",
    )
    delay = retry_delay(error)
    assert delay is not None and 0 < delay <= 1 / RATE
    assert await limited.res.store.messages.count_documents({"body": "one too many"}) == 0

    # A repeat of an accepted request is answered, not refused; other users have their own bucket.
    again = await send_as(api(limited), user, "agent", numbers[0], "burst", request_id="r0")
    assert again.duplicate and again.message.id == accepted[0].message.id
    await send_as(api(limited), other, "agent", unique_number(), "mine")

    # The bucket is in Redis: another replica's limiter finds it empty too.
    redis = Redis.from_url(redis_server.uri)
    try:
        with pytest.raises(ResourceExhausted):
            await SendRate(redis, RATE, BURST).admit(user)
    finally:
        await redis.aclose()

    await asyncio.sleep(delay)
    await send_as(api(limited), user, "agent", numbers[0], "after the wait")


async def test_the_guard_lets_through_what_is_configured(limited: House) -> None:
    for number in ("+447400123456", "+19002345678"):
        sent = await send_as(api(limited), unique_user(), "agent", number, "allowed here")
        assert sent.message.to_number == number
