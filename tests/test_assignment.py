"""Assignment and transfer, contact names and labels, the unassigned queue and the inbox summary (issue 11), over
real gRPC: the session's server process (unassigned visible to agents, the default) and in-process stacks with
their own databases where counts must be exact or the setting differs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sms.v1 import ingest_pb2_grpc, sms_pb2, sms_pb2_grpc, types_pb2

from server import limits
from server.embedded import EmbeddedServer
from server.errors import error_reason
from tests.support.identities import auth, unique_number, unique_user
from tests.support.in_process import House, house_env, running_house
from tests.support.polling import eventually_async
from tests.test_core import expect_error, inbound
from tests.test_subscribe import Stream, close_streams, open_stream

UPDATED = types_pb2.EVENT_TYPE_CONVERSATION_UPDATED


async def assign(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, user: str, role: str, cid: str, assignee: str
) -> types_pb2.Conversation:
    resp = await sms.AssignConversation(
        sms_pb2.AssignConversationRequest(conversation_id=cid, assignee=assignee), metadata=auth(user, role)
    )
    return resp.conversation


async def get(sms: sms_pb2_grpc.SmsServiceAsyncStub, user: str, role: str, cid: str) -> types_pb2.Conversation:
    resp = await sms.GetConversation(sms_pb2.GetConversationRequest(conversation_id=cid), metadata=auth(user, role))
    return resp.conversation


async def update(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, user: str, role: str, paths: list[str], **fields: Any
) -> types_pb2.Conversation:
    resp = await sms.UpdateConversation(
        sms_pb2.UpdateConversationRequest(
            conversation=types_pb2.Conversation(**fields), update_mask=FieldMask(paths=paths)
        ),
        metadata=auth(user, role),
    )
    return resp.conversation


async def new_unassigned(
    ingest: ingest_pb2_grpc.SmsIngestServiceAsyncsms_pb2_grpc.SmsServiceAsyncStub, body: str = "hello?"
) -> tuple[str, str]:
    """A new contact's inbound: its number and its (unassigned) conversation's id."""
    number = unique_number()
    msg = (await inbound(ingest, number, body)).message  # type: ignore[arg-type]
    assert msg.owner == ""
    return number, msg.conversation_id


async def owned_by(sms: sms_pb2_grpc.SmsServiceAsyncStub, user: str, body: str = "hi") -> tuple[str, types_pb2.Message]:
    """A conversation `user` started with Send: its id and the message."""
    resp = await sms.Send(sms_pb2.SendRequest(to=unique_number(), body=body), metadata=auth(user))
    return resp.message.conversation_id, resp.message


def history(conv: types_pb2.Conversation) -> list[tuple[str, str, str]]:
    return [(a.actor, a.from_assignee, a.to_assignee) for a in conv.assignment_history]


def conversation_events(stream: Stream, cid: str) -> list[types_pb2.Conversation]:
    return [r.event.conversation for r in stream.events if r.event.conversation.id == cid]


def message_events(stream: Stream, cid: str) -> list[types_pb2.Message]:
    return [r.event.message for r in stream.events if r.event.message.conversation_id == cid]


async def own_barrier(sms: sms_pb2_grpc.SmsServiceAsyncStub, stream: Stream, user: str) -> None:
    """Sends as `user` and waits for the stream to show it: everything appended before has been routed."""
    _, mine = await owned_by(sms, user, "barrier")
    await eventually_async(lambda: any(m.id == mine.id for m in message_events(stream, mine.conversation_id)), 10, user)


# AssignConversation


async def test_an_admin_assigns_an_unassigned_conversation_and_unassigns_it(
    sms: sms_pb2_grpc.SmsServiceAsyncStub,
    ingest: ingest_pb2_grpc.SmsIngestServiceAsyncsms_pb2_grpc.SmsServiceAsyncStub,
    db: Any,
) -> None:
    boss, bob, alice = unique_user("admin"), unique_user("bob"), unique_user("alice")
    _, cid = await new_unassigned(ingest)
    conv = await assign(sms, boss, "admin", cid, bob)
    assert conv.owner == bob and history(conv) == [(boss, "", bob)]
    assert conv.assignment_history[0].time.seconds > 0
    # The messages follow; another agent no longer sees it (it is not unassigned any more).
    assert await db.messages.count_documents({"conversation_id": cid, "owner": bob}) == 1
    assert (await get(sms, bob, "agent", cid)).owner == bob
    await expect_error(get(sms, alice, "agent", cid), grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")
    # Assigning to the current assignee changes nothing.
    assert history(await assign(sms, boss, "admin", cid, bob)) == [(boss, "", bob)]
    # An admin takes it from the agent, then unassigns it: every change is in the history, oldest first.
    await assign(sms, boss, "admin", cid, alice)
    conv = await assign(sms, boss, "admin", cid, "")
    assert conv.owner == "" and history(conv) == [(boss, "", bob), (boss, bob, alice), (boss, alice, "")]
    assert await db.messages.count_documents({"conversation_id": cid, "owner": ""}) == 1
    stored = await db.conversations.find_one({"_id": cid})
    assert [(h["actor"], h["from"], h["to"]) for h in stored["assignment_history"]] == history(conv)


async def test_an_agent_takes_hands_over_and_releases(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, ingest: ingest_pb2_grpc.SmsIngestServiceAsyncsms_pb2_grpc.SmsServiceAsyncStub
) -> None:
    alice, bob = unique_user("alice"), unique_user("bob")
    _, cid = await new_unassigned(ingest)
    # Unassigned: both agents see it (SMS_UNASSIGNED_VISIBLE_TO_AGENTS defaults to true).
    assert (await get(sms, bob, "agent", cid)).owner == ""
    assert (await assign(sms, alice, "agent", cid, alice)).owner == alice
    await expect_error(get(sms, bob, "agent", cid), grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")
    # A repeat of the claim is answered with the conversation, unchanged.
    assert len((await assign(sms, alice, "agent", cid, alice)).assignment_history) == 1
    conv = await assign(sms, alice, "agent", cid, bob)
    assert conv.owner == bob
    await expect_error(get(sms, alice, "agent", cid), grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")
    conv = await assign(sms, bob, "agent", cid, "")
    assert conv.owner == ""
    assert history(conv) == [(alice, "", alice), (alice, alice, bob), (bob, bob, "")]
    assert (await get(sms, alice, "agent", cid)).owner == ""


async def test_what_agents_may_not_assign(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, ingest: ingest_pb2_grpc.SmsIngestServiceAsyncsms_pb2_grpc.SmsServiceAsyncStub
) -> None:
    alice, bob, carol = unique_user("alice"), unique_user("bob"), unique_user("carol")
    _, unassigned = await new_unassigned(ingest)
    # An unassigned conversation only for themselves.
    await expect_error(
        assign(sms, alice, "agent", unassigned, bob), grpc.StatusCode.PERMISSION_DENIED, "ASSIGNMENT_NOT_ALLOWED"
    )
    assert (await get(sms, alice, "agent", unassigned)).owner == ""
    # Another agent's: a claim is refused as taken; anything else is NOT_FOUND, as for every read.
    bobs, _ = await owned_by(sms, bob)
    error = await expect_error(
        assign(sms, alice, "agent", bobs, alice), grpc.StatusCode.FAILED_PRECONDITION, "CONVERSATION_ALREADY_ASSIGNED"
    )
    assert bob not in (error.details() or "")
    for assignee in ("", carol):
        await expect_error(
            assign(sms, alice, "agent", bobs, assignee), grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND"
        )
    assert (await get(sms, bob, "agent", bobs)).owner == bob
    unknown = "c" + "0" * 24
    for user, role in ((alice, "agent"), ("boss", "admin")):
        await expect_error(assign(sms, user, role, unknown, user), grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")
    await expect_error(assign(sms, alice, "agent", "", alice), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_error(
        assign(sms, "boss", "admin", bobs, "x" * (limits.USER_ID_BYTES + 1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INPUT_TOO_LARGE",
    )


async def test_twenty_concurrent_claims_have_exactly_one_winner(
    sms: sms_pb2_grpc.SmsServiceAsyncStub,
    ingest: ingest_pb2_grpc.SmsIngestServiceAsyncsms_pb2_grpc.SmsServiceAsyncStub,
    db: Any,
) -> None:
    _, cid = await new_unassigned(ingest)
    agents = [unique_user("claimer") for _ in range(20)]
    results = await asyncio.gather(*(assign(sms, a, "agent", cid, a) for a in agents), return_exceptions=True)
    winners = [r for r in results if isinstance(r, types_pb2.Conversation)]
    losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(winners) == 1 and len(losers) == 19, results
    assert all(e.code() == grpc.StatusCode.FAILED_PRECONDITION for e in losers)
    assert {error_reason(e) for e in losers} == {"CONVERSATION_ALREADY_ASSIGNED"}
    winner = winners[0].owner
    stored = await db.conversations.find_one({"_id": cid})
    assert stored["owner"] == winner and len(stored["assignment_history"]) == 1
    assert await db.messages.count_documents({"conversation_id": cid, "owner": winner}) == 1


async def test_a_reply_claims_and_is_recorded_in_the_history(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, ingest: ingest_pb2_grpc.SmsIngestServiceAsyncsms_pb2_grpc.SmsServiceAsyncStub
) -> None:
    alice = unique_user("alice")
    number, cid = await new_unassigned(ingest)
    await sms.Send(sms_pb2.SendRequest(to=number, body="I can help"), metadata=auth(alice))
    conv = await get(sms, alice, "agent", cid)
    assert conv.owner == alice and history(conv) == [(alice, "", alice)]


# UpdateConversation


async def test_the_assignee_an_admin_and_the_crm_update_names_ids_and_labels(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, ingest: ingest_pb2_grpc.SmsIngestServiceAsyncsms_pb2_grpc.SmsServiceAsyncStub
) -> None:
    alice, bob = unique_user("alice"), unique_user("bob")
    cid, _ = await owned_by(sms, alice)
    watch = await open_stream(sms, "boss", "admin", all_owners=True).started()
    conv = await update(
        sms, alice, "agent", ["contact_name", "labels"], id=cid, contact_name="Ada Lovelace", labels=["vip", "b", "vip"]
    )
    assert conv.contact_name == "Ada Lovelace" and list(conv.labels) == ["vip", "b"] and conv.owner == alice
    # Paths not in the mask are left alone, whatever the request carries.
    conv = await update(sms, "crm", "service", ["contact_id"], id=cid, contact_id="crm-42", contact_name="ignored")
    assert conv.contact_id == "crm-42" and conv.contact_name == "Ada Lovelace"
    conv = await update(sms, "boss", "admin", ["labels"], id=cid)
    assert list(conv.labels) == [] and conv.contact_name == "Ada Lovelace"
    again = await get(sms, alice, "agent", cid)
    assert (again.contact_name, again.contact_id, list(again.labels)) == ("Ada Lovelace", "crm-42", [])
    # Each update is a conversation-updated event showing the new values.
    await eventually_async(
        lambda: [c.contact_name for c in conversation_events(watch, cid)][-3:] == ["Ada Lovelace"] * 3, 10, "updates"
    )
    assert [c.contact_id for c in conversation_events(watch, cid)][-2:] == ["crm-42", "crm-42"]
    await close_streams(watch)

    # Another agent: NOT_FOUND (existence is not leaked); an agent who sees an unassigned one: PERMISSION_DENIED.
    await expect_error(
        update(sms, bob, "agent", ["contact_name"], id=cid, contact_name="x"),
        grpc.StatusCode.NOT_FOUND,
        "CONVERSATION_NOT_FOUND",
    )
    _, unassigned = await new_unassigned(ingest)
    await expect_error(
        update(sms, bob, "agent", ["contact_name"], id=unassigned, contact_name="x"),
        grpc.StatusCode.PERMISSION_DENIED,
        "NOT_ASSIGNEE",
    )
    assert (await get(sms, bob, "agent", unassigned)).contact_name == ""


@pytest.mark.parametrize(
    ("paths", "fields", "field", "reason"),
    [
        ([], {}, "update_mask", "INVALID_UPDATE_MASK"),
        (["owner"], {"owner": "me"}, "update_mask", "INVALID_UPDATE_MASK"),
        (["contact_name", "*"], {}, "update_mask", "INVALID_UPDATE_MASK"),
        (["contact_name"], {"contact_name": "é" * limits.CONTACT_NAME_BYTES}, "conversation.contact_name", None),
        (["contact_id"], {"contact_id": "x" * (limits.CONTACT_ID_BYTES + 1)}, "conversation.contact_id", None),
        (["labels"], {"labels": ["l"] * (limits.LABELS_COUNT + 1)}, "conversation.labels", "INPUT_TOO_LARGE"),
        (["labels"], {"labels": ["x" * (limits.LABEL_BYTES + 1)]}, "conversation.labels[0]", "INPUT_TOO_LARGE"),
        (["labels"], {"labels": ["ok", "  "]}, "conversation.labels[1]", "INVALID_ARGUMENT"),
        (["labels"] * (limits.MASK_PATHS_COUNT + 1), {}, "update_mask.paths", "INPUT_TOO_LARGE"),
    ],
)
async def test_update_refuses_bad_masks_and_values(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, paths: list[str], fields: dict[str, Any], field: str, reason: str | None
) -> None:
    alice = unique_user("alice")
    cid, _ = await owned_by(sms, alice)
    error = await expect_error(
        update(sms, alice, "agent", paths, id=cid, **fields), grpc.StatusCode.INVALID_ARGUMENT, reason
    )
    assert (error.details() or "").startswith(field) and len(error.details() or "") < 200
    assert (await get(sms, alice, "agent", cid)).contact_name == ""


async def test_update_needs_a_conversation_id(sms: sms_pb2_grpc.SmsServiceAsyncStub) -> None:
    await expect_error(update(sms, "boss", "admin", ["labels"]), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_error(
        update(sms, "boss", "admin", ["labels"], id="c" + "0" * 24),
        grpc.StatusCode.NOT_FOUND,
        "CONVERSATION_NOT_FOUND",
    )


# Agents and the unassigned queue (default: visible)


async def test_agents_see_read_and_follow_unassigned_conversations(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, ingest: ingest_pb2_grpc.SmsIngestServiceAsyncsms_pb2_grpc.SmsServiceAsyncStub
) -> None:
    alice, bob = unique_user("alice"), unique_user("bob")
    everything, bobs = open_stream(sms, alice), open_stream(sms, bob)
    for s in (everything, bobs):
        await s.started()
    number, cid = await new_unassigned(ingest, "is anyone there?")
    narrowed = await open_stream(sms, alice, conversation_id=cid).started()
    listed = await sms.ListMessages(sms_pb2.ListMessagesRequest(conversation_id=cid), metadata=auth(alice))
    assert [m.body for m in listed.messages] == ["is anyone there?"]
    await sms.MarkConversationRead(sms_pb2.MarkConversationReadRequest(conversation_id=cid), metadata=auth(alice))
    second = (await inbound(ingest, number, "hello??")).message  # type: ignore[arg-type]
    for s in (everything, narrowed, bobs):
        await eventually_async(lambda s=s: second.id in {m.id for m in message_events(s, cid)}, 10, "unassigned event")
    # Alice takes it: bob's stream gets that change, showing alice, and nothing after it.
    await assign(sms, alice, "agent", cid, alice)
    third = (await inbound(ingest, number, "thanks")).message  # type: ignore[arg-type]
    await eventually_async(lambda: third.id in {m.id for m in message_events(everything, cid)}, 10, "alice's")
    await own_barrier(sms, bobs, bob)
    assert conversation_events(bobs, cid)[-1].owner == alice
    assert third.id not in {m.id for m in message_events(bobs, cid)}
    await close_streams(everything, bobs, narrowed)


# Subscribe follows a transfer, live and on a resume


async def test_a_transfer_moves_the_stream_live(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, ingest: ingest_pb2_grpc.SmsIngestServiceAsyncsms_pb2_grpc.SmsServiceAsyncStub
) -> None:
    alice, bob, carol = unique_user("alice"), unique_user("bob"), unique_user("carol")
    sa, sb, sc = open_stream(sms, alice), open_stream(sms, bob), open_stream(sms, carol)
    for s in (sa, sb, sc):
        await s.started()
    cid, before = await owned_by(sms, alice, "before")
    await assign(sms, alice, "agent", cid, bob)
    number = before.to_number
    after = (await inbound(ingest, number, "after")).message  # type: ignore[arg-type]
    reply = (await sms.Send(sms_pb2.SendRequest(to=number, body="bob here"), metadata=auth(bob))).message

    await eventually_async(lambda: reply.id in {m.id for m in message_events(sb, cid)}, 10, "bob's events")
    # Bob: the conversation from the transfer on (showing him), then its events; nothing from before.
    assert conversation_events(sb, cid)[0].owner == bob
    assert {after.id, reply.id} <= {m.id for m in message_events(sb, cid)}
    assert before.id not in {m.id for m in message_events(sb, cid)}
    # Alice: her message, one update showing bob, and nothing after.
    await own_barrier(sms, sa, alice)
    assert [c.owner for c in conversation_events(sa, cid)][-1] == bob
    assert {m.id for m in message_events(sa, cid)} == {before.id}
    transfer = [c for c in conversation_events(sa, cid) if c.owner == bob]
    assert len(transfer) == 1 and history(transfer[0])[-1] == (alice, alice, bob)
    # Carol: nothing of it at all.
    await own_barrier(sms, sc, carol)
    assert not conversation_events(sc, cid) and not message_events(sc, cid)
    await close_streams(sa, sb, sc)


def replayed(stream: Stream) -> list[sms_pb2.SubscribeResponse]:
    """The events a resumed stream replayed: those before its first heartbeat."""
    out = []
    for r in stream.responses:
        if r.WhichOneof("response") == "heartbeat":
            break
        out.append(r)
    return [r for r in out if r.WhichOneof("response") == "event"]


async def test_a_resume_replays_each_event_under_its_own_entitlements(
    sms: sms_pb2_grpc.SmsServiceAsyncStub, ingest: ingest_pb2_grpc.SmsIngestServiceAsyncsms_pb2_grpc.SmsServiceAsyncStub
) -> None:
    alice, bob = unique_user("alice"), unique_user("bob")
    cid, before = await owned_by(sms, alice, "before the transfer")
    # The position just before the transfer, as each agent's stream knows it (the first heartbeat's).
    mark = await open_stream(sms, alice).started()
    token = mark.responses[0].heartbeat.last_event_id
    await close_streams(mark)
    await assign(sms, alice, "agent", cid, bob)
    after = (await inbound(ingest, before.to_number, "after the transfer")).message  # type: ignore[arg-type]
    await assign(sms, bob, "agent", cid, alice)  # and back: alice is entitled again from here
    back = (await inbound(ingest, before.to_number, "after it came back")).message  # type: ignore[arg-type]

    ra = await open_stream(sms, alice, resume_token=token).started()
    rb = await open_stream(sms, bob, resume_token=token).started()
    await eventually_async(lambda: all(len(replayed(s)) < len(s.responses) for s in (ra, rb)), 10, "the replays")

    def seen(stream: Stream) -> list[tuple[str, str]]:
        out = []
        for r in replayed(stream):
            if r.event.conversation.id == cid:
                out.append(("conversation", r.event.conversation.owner))
            elif r.event.message.conversation_id == cid:
                out.append(("message", r.event.message.body))
        return out

    # Alice: the transfer away (showing bob), not what came while bob held it, then the transfer back and after.
    a_seen = seen(ra)
    assert ("message", after.body) not in a_seen
    assert a_seen[0] == ("conversation", bob)
    assert ("conversation", alice) in a_seen and ("message", back.body) in a_seen
    # Bob: the transfer in and what came while he held it, the transfer away, and nothing after.
    b_seen = seen(rb)
    assert b_seen[0] == ("conversation", bob) and ("message", after.body) in b_seen
    assert b_seen[-1] == ("conversation", alice)
    assert ("message", back.body) not in b_seen and ("message", before.body) not in b_seen
    await close_streams(ra, rb)


# GetInboxSummary, and the setting off: in-process stacks with databases of their own


@pytest.fixture(scope="module")
async def house(mongo: EmbeddedServer, redis_server: EmbeddedServer) -> AsyncIterator[House]:
    async with running_house(house_env(mongo.uri, redis_server.uri)) as running:
        yield running


@pytest.fixture(scope="module")
async def hidden(mongo: EmbeddedServer, redis_server: EmbeddedServer) -> AsyncIterator[House]:
    env = house_env(mongo.uri, redis_server.uri, SMS_UNASSIGNED_VISIBLE_TO_AGENTS="false")
    async with running_house(env) as running:
        yield running


def api(house: House) -> sms_pb2_grpc.SmsServiceAsyncStub:
    return cast("sms_pb2_grpc.SmsServiceAsyncStub", house.sms)


async def summary(house: House, user: str, role: str = "agent") -> tuple[int, int, int]:
    s = await api(house).GetInboxSummary(sms_pb2.GetInboxSummaryRequest(), metadata=auth(user, role))
    return s.mine, s.unread, s.unassigned


async def test_the_inbox_summary_counts_what_the_caller_may_see(house: House, hidden: House) -> None:
    alice, bob = unique_user("alice"), unique_user("bob")
    for h in (house, hidden):
        sms, ingest = api(h), h.ingest
        await owned_by(sms, alice)
        _, first = await owned_by(sms, alice)
        await owned_by(sms, bob)
        await inbound(ingest, first.to_number, "reply to alice")  # type: ignore[arg-type]
        await new_unassigned(ingest)  # type: ignore[arg-type]
        await new_unassigned(ingest)  # type: ignore[arg-type]
        _, read = await new_unassigned(ingest)  # type: ignore[arg-type]
        await sms.MarkConversationRead(
            sms_pb2.MarkConversationReadRequest(conversation_id=read), metadata=auth("a", "admin")
        )
    # Visible: alice's 2 (one unread) and 3 unassigned (2 unread); bob's one is not counted for her.
    assert await summary(house, alice) == (2, 3, 3)
    assert await summary(house, bob) == (1, 2, 3)
    assert await summary(house, "boss", "admin") == (0, 3, 3)
    # Hidden from agents: no unassigned count and none of their unread.
    assert await summary(hidden, alice) == (2, 1, 0)
    assert await summary(hidden, "boss", "admin") == (0, 3, 3)


async def test_with_the_setting_off_agents_never_see_unassigned_conversations(hidden: House) -> None:
    sms, ingest, alice = api(hidden), hidden.ingest, unique_user("alice")
    stream = await open_stream(sms, alice).started()
    number, cid = await new_unassigned(ingest)  # type: ignore[arg-type]
    for call in (
        get(sms, alice, "agent", cid),
        assign(sms, alice, "agent", cid, alice),
        update(sms, alice, "agent", ["contact_name"], id=cid, contact_name="x"),
        sms.AddNote(sms_pb2.AddNoteRequest(conversation_id=cid, body="psst"), metadata=auth(alice)),
    ):
        await expect_error(call, grpc.StatusCode.NOT_FOUND, "CONVERSATION_NOT_FOUND")
    # A reply still claims it; from then on it is hers.
    await sms.Send(sms_pb2.SendRequest(to=number, body="hi"), metadata=auth(alice))
    assert history(await get(sms, alice, "agent", cid)) == [(alice, "", alice)]
    await eventually_async(lambda: bool(conversation_events(stream, cid)), 10, "the claim's event")
    assert all(c.owner == alice for c in conversation_events(stream, cid))
    assert all(m.owner == alice for m in message_events(stream, cid))
    await close_streams(stream)


def test_the_largest_conversation_event_fits_the_event_bound() -> None:
    """A conversation at every bound (name, labels, contact id, the longest history kept) stays within EVENT_BYTES."""
    from datetime import UTC, datetime

    from server.convert import conversation_to_proto
    from server.documents import ASSIGNMENT_HISTORY_MAX, assignment_entry, new_conversation

    at = datetime(9999, 12, 31, tzinfo=UTC)
    doc = new_conversation("+" + "9" * 127, "+" + "8" * 127, "u" * limits.USER_ID_BYTES, "i" * 256, at)
    doc["contact_name"] = "n" * limits.CONTACT_NAME_BYTES
    doc["labels"] = ["l" * limits.LABEL_BYTES] * limits.LABELS_COUNT
    doc["last_message_preview"] = "é" * 160
    user = "u" * limits.USER_ID_BYTES
    doc["assignment_history"] = [assignment_entry(user, user, user, at)] * ASSIGNMENT_HISTORY_MAX
    event = types_pb2.Event(type=UPDATED, conversation=conversation_to_proto(doc))
    assert 40_000 < event.ByteSize() < limits.EVENT_BYTES
