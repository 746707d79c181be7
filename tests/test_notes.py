"""AddNote (issue 11): internal notes stored in the thread, delivered live, idempotent, never sent to Twilio. An
in-process stack with the Twilio simulator and arq's burst worker, so "never sent" is observed at the simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest
from sms.v1 import ingest_pb2, sms_pb2, sms_pb2_grpc, types_pb2

from server import limits
from server.embedded import EmbeddedServer
from tests.support.identities import auth, unique_number, unique_user
from tests.support.in_process import FROM_NUMBER, House, house_env, running_house
from tests.support.polling import eventually_async
from tests.test_core import expect_error
from tests.test_subscribe import close_streams, open_stream

CREATED = types_pb2.EVENT_TYPE_MESSAGE_CREATED


@pytest.fixture(scope="module")
async def house(mongo: EmbeddedServer, redis_server: EmbeddedServer) -> AsyncIterator[House]:
    async with running_house(house_env(mongo.uri, redis_server.uri)) as running:
        yield running


def api(house: House) -> sms_pb2_grpc.SmsServiceAsyncStub:
    return cast("sms_pb2_grpc.SmsServiceAsyncStub", house.sms)


async def note(house: House, user: str, cid: str, body: str, role: str = "agent", **kw: Any) -> types_pb2.Message:
    resp = await api(house).AddNote(
        sms_pb2.AddNoteRequest(conversation_id=cid, body=body, **kw), metadata=auth(user, role)
    )
    return resp.message


async def started_by(house: House, user: str, body: str = "hello") -> types_pb2.Message:
    resp = await api(house).Send(sms_pb2.SendRequest(to=unique_number(), body=body), metadata=auth(user))
    return resp.message


async def conversation(house: House, user: str, cid: str, role: str = "agent") -> types_pb2.Conversation:
    resp = await api(house).GetConversation(
        sms_pb2.GetConversationRequest(conversation_id=cid), metadata=auth(user, role)
    )
    return resp.conversation


async def test_a_note_is_stored_listed_and_delivered_live_but_never_sent(house: House) -> None:
    alice = unique_user("alice")
    sms = await started_by(house, alice, "your order shipped")
    cid = sms.conversation_id
    await house.work()
    creates_before = len(house.sim.state.in_order())
    stream = await open_stream(api(house), alice).started()
    admin_stream = await open_stream(api(house), "boss", "admin", all_owners=True).started()

    n = await note(house, alice, cid, "customer prefers calls after 5pm", request_id="n-1")
    assert n.direction == types_pb2.DIRECTION_NOTE and n.author == alice and n.owner == alice
    assert (n.from_number, n.to_number, n.twilio_sid) == ("", "", "")
    assert n.status == types_pb2.MESSAGE_STATUS_UNSPECIFIED and not n.status_history
    for s in (stream, admin_stream):
        await eventually_async(
            lambda s=s: any(r.event.message.id == n.id and r.event.type == CREATED for r in s.events), 10, "live note"
        )

    # In the thread, newest first; counted in the conversation, but neither unread nor the last-message preview.
    listed = await api(house).ListMessages(sms_pb2.ListMessagesRequest(conversation_id=cid), metadata=auth(alice))
    assert [m.id for m in listed.messages] == [n.id, sms.id]
    assert listed.messages[1].author == alice  # an outbound message's author is its sender
    conv = await conversation(house, alice, cid)
    assert conv.message_count == 2 and conv.unread_count == 0
    assert conv.last_message_preview == "your order shipped"
    assert conv.last_message_direction == types_pb2.DIRECTION_OUTBOUND

    # Never enqueued, never sent: the worker runs and the simulator saw no new message.
    await house.work()
    assert len(house.sim.state.in_order()) == creates_before
    assert not [m for m in house.sim.state.in_order() if "5pm" in (m.body or "")]
    stored = await house.res.store.get_message(n.id)
    assert stored is not None and stored["direction"] == "note" and "pending" not in stored
    assert "twilio_sid" not in stored and "in_flight" not in stored
    await close_streams(stream, admin_stream)


async def test_notes_are_idempotent_per_user(house: House) -> None:
    alice, boss = unique_user("alice"), unique_user("admin")
    cid = (await started_by(house, alice)).conversation_id
    first = await note(house, alice, cid, "call back Monday", request_id="same")
    again = await note(house, alice, cid, "call back Monday", request_id="same")
    assert again.id == first.id
    assert await house.res.store.messages.count_documents({"conversation_id": cid, "direction": "note"}) == 1
    await expect_error(
        note(house, alice, cid, "another text", request_id="same"), grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED"
    )
    # The key is the user's: the same key from someone else is their own note; without a key, each call is new.
    other = await note(house, boss, cid, "call back Monday", role="admin", request_id="same")
    assert other.id != first.id and other.author == boss and other.owner == alice
    await note(house, alice, cid, "twice")
    await note(house, alice, cid, "twice")
    assert await house.res.store.messages.count_documents({"conversation_id": cid, "direction": "note"}) == 4


async def test_notes_are_seen_by_whoever_sees_the_conversation_and_no_one_else(house: House) -> None:
    alice, bob = unique_user("alice"), unique_user("bob")
    cid = (await started_by(house, alice)).conversation_id
    bob_stream = await open_stream(api(house), bob).started()
    secret = await note(house, alice, cid, "alice's private note")
    await expect_error(note(house, bob, cid, "mine?"), grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")
    await expect_error(
        api(house).GetMessage(sms_pb2.GetMessageRequest(message_id=secret.id), metadata=auth(bob)),
        grpc.StatusCode.NOT_FOUND,
        "MESSAGE_NOT_FOUND",
    )
    got = await api(house).GetMessage(sms_pb2.GetMessageRequest(message_id=secret.id), metadata=auth("b", "admin"))
    assert got.message.body == "alice's private note"
    # An unassigned conversation is seen by every agent: any of them may note it, and its notes reach them all.
    await house.ingest.RecordInbound(
        ingest_pb2.RecordInboundRequest(
            message_sid=f"SM{unique_user('x')}", from_number=unique_number(), to_number=FROM_NUMBER, body="hi"
        ),
        metadata=auth("bridge", "service"),
    )
    queue = [
        c
        for c in (
            await api(house).ListConversations(sms_pb2.ListConversationsRequest(), metadata=auth("b", "admin"))
        ).conversations
        if c.owner == ""
    ]
    shared = await note(house, alice, queue[0].id, "looks like spam")
    await eventually_async(lambda: any(r.event.message.id == shared.id for r in bob_stream.events), 10, "shared note")
    # Bob's own barrier: nothing of alice's conversation reached him.
    mine = await started_by(house, bob)
    await eventually_async(lambda: any(r.event.message.id == mine.id for r in bob_stream.events), 10, "bob's own")
    assert not any(r.event.message.id == secret.id or r.event.conversation.id == cid for r in bob_stream.events)
    await close_streams(bob_stream)


@pytest.mark.parametrize(
    ("fields", "field", "code"),
    [
        ({"body": ""}, "body", grpc.StatusCode.INVALID_ARGUMENT),
        ({"body": "   "}, "body", grpc.StatusCode.INVALID_ARGUMENT),
        ({"body": "é" * (limits.NOTE_BODY_BYTES // 2 + 1)}, "body", grpc.StatusCode.INVALID_ARGUMENT),
        ({"request_id": "x" * (limits.REQUEST_ID_BYTES + 1)}, "request_id", grpc.StatusCode.INVALID_ARGUMENT),
        ({"conversation_id": ""}, "conversation_id", grpc.StatusCode.INVALID_ARGUMENT),
        ({"conversation_id": "c" + "0" * 24}, "conversation", grpc.StatusCode.NOT_FOUND),
    ],
)
async def test_note_errors(house: House, fields: dict[str, str], field: str, code: grpc.StatusCode) -> None:
    alice = unique_user("alice")
    cid = (await started_by(house, alice)).conversation_id
    request = {"conversation_id": cid, "body": "ok", **fields}
    error = await expect_error(
        api(house).AddNote(sms_pb2.AddNoteRequest(**request), metadata=auth(alice)),  # type: ignore[arg-type]
        code,
    )
    assert field in (error.details() or "") and len(error.details() or "") < 200
    assert await house.res.store.messages.count_documents({"conversation_id": cid, "direction": "note"}) == 0
