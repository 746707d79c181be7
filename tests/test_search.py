"""ListConversations' filter and query, and SearchMessages, over real gRPC against a real server process: each
filter term, the query (number in several formats, name, last message), message search with notes, paging,
bad filters and tokens, and isolation between agents."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc
import pytest
from google.protobuf.field_mask_pb2 import FieldMask
from sms.v1 import ingest_pb2, ingest_pb2_grpc, sms_pb2, sms_pb2_grpc, types_pb2

from server.errors import error_reason
from server.reasons import Reason
from tests.support.identities import auth, unique_number, unique_user
from tests.support.launch import start_server

OUR_NUMBER = "+15005550006"
SERVICE = auth("crm", "service")
ADMIN = auth("admin-search", "admin")

if TYPE_CHECKING:
    Stub = sms_pb2_grpc.SmsServiceAsyncStub


def word() -> str:
    """A word no other test uses (letters only, so it is one search word)."""
    return "w" + "".join(chr(ord("a") + int(c, 16) % 26) for c in uuid.uuid4().hex[:10])


async def send(sms: Stub, agent: str, body: str, to: str | None = None, contact_id: str = "") -> sms_pb2.SendResponse:
    request = sms_pb2.SendRequest(
        to=to or unique_number(), body=body, request_id=uuid.uuid4().hex, contact_id=contact_id
    )
    resp: sms_pb2.SendResponse = await sms.Send(request, metadata=auth(agent))
    return resp


async def inbound(ingest: ingest_pb2_grpc.SmsIngestServiceAsyncStub, body: str, number: str | None = None) -> str:
    """An inbound from a new contact (an unassigned conversation); its number."""
    number = number or unique_number()
    await ingest.RecordInbound(
        ingest_pb2.RecordInboundRequest(
            message_sid="SM" + uuid.uuid4().hex, from_number=number, to_number=OUR_NUMBER, body=body
        ),
        metadata=SERVICE,
    )
    return number


async def update(sms: Stub, cid: str, **fields: Any) -> None:
    conv = types_pb2.Conversation(id=cid, **fields)
    await sms.UpdateConversation(
        sms_pb2.UpdateConversationRequest(conversation=conv, update_mask=FieldMask(paths=list(fields))),
        metadata=SERVICE,
    )


async def listed(sms: Stub, md: Any, filter: str = "", query: str = "", page_size: int = 100) -> list[str]:
    """Ids of every conversation listed, across pages."""
    ids: list[str] = []
    token = ""
    for _ in range(100):
        resp = await sms.ListConversations(
            sms_pb2.ListConversationsRequest(filter=filter, query=query, page_size=page_size, page_token=token),
            metadata=md,
        )
        ids += [c.id for c in resp.conversations]
        token = resp.next_page_token
        if not token:
            return ids
    raise AssertionError("paging did not end")


async def hits(sms: Stub, md: Any, query: str, page_size: int = 100) -> list[sms_pb2.MessageHit]:
    found: list[sms_pb2.MessageHit] = []
    token = ""
    for _ in range(100):
        resp = await sms.SearchMessages(
            sms_pb2.SearchMessagesRequest(query=query, page_size=page_size, page_token=token), metadata=md
        )
        found += resp.hits
        token = resp.next_page_token
        if not token:
            return found
    raise AssertionError("paging did not end")


def invalid(err: grpc.aio.AioRpcError, field: str, reason: Reason) -> None:
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
    assert (err.details() or "").startswith(f"{field}:"), err.details()
    assert error_reason(err) == reason.value, err.details()


# ---------------------------------------------------------------------------------------------------------
# Filters


async def test_each_filter_term(sms: Stub, ingest: ingest_pb2_grpc.SmsIngestServiceAsyncStub) -> None:
    agent = unique_user()
    plain = (await send(sms, agent, "plain")).message.conversation_id
    crm = f"crm-{uuid.uuid4().hex[:8]}"
    with_contact = (await send(sms, agent, "for the crm", contact_id=crm)).message.conversation_id
    vip = (await send(sms, agent, "vip one")).message.conversation_id
    label = word()
    await update(sms, vip, labels=[label, "other"])
    # Unread: the contact answers one of the agent's conversations.
    to_number = unique_number()
    answered = (await send(sms, agent, "question?", to=to_number)).message.conversation_id
    await inbound(ingest, "answer", number=to_number)
    # Opted out: STOP from another.
    stop_number = unique_number()
    stopped = (await send(sms, agent, "offer", to=stop_number)).message.conversation_id
    await inbound(ingest, "STOP", number=stop_number)
    me = auth(agent)
    mine = {plain, with_contact, vip, answered, stopped}
    assert set(await listed(sms, me, f'assignee = "{agent}"')) == mine
    assert set(await listed(sms, me, "unread")) & mine == {answered, stopped}
    assert set(await listed(sms, me, f'assignee = "{agent}" AND NOT unread')) == {plain, with_contact, vip}
    assert set(await listed(sms, me, f'assignee = "{agent}" AND -opted_out')) == mine - {stopped}
    assert set(await listed(sms, me, "opted_out")) & mine == {stopped}
    assert await listed(sms, me, f'label = "{label}"') == [vip]
    assert await listed(sms, me, f'labels:"{label}" AND label = other') == [vip]
    assert await listed(sms, me, f'label = "{label}" AND unread') == []
    assert await listed(sms, me, f'contact_id = "{crm}"') == [with_contact]
    # The CRM (service role) shows a contact's thread by its id; admins filter by any assignee.
    assert await listed(sms, SERVICE, f"contact_id = {crm}") == [with_contact]
    assert set(await listed(sms, ADMIN, f'assignee = "{agent}" AND opted_out')) == {stopped}


async def test_flag_filters_follow_reads_and_opt_outs(
    sms: Stub, ingest: ingest_pb2_grpc.SmsIngestServiceAsyncStub
) -> None:
    """`unread` and `opted_out` start from indexed flags (store.py): every change of the state moves them."""
    marker = word()
    number = await inbound(ingest, f"hello {marker}")
    (cid,) = await listed(sms, ADMIN, "unread", marker)
    await sms.MarkConversationRead(sms_pb2.MarkConversationReadRequest(conversation_id=cid), metadata=ADMIN)
    assert await listed(sms, ADMIN, "unread", marker) == []
    assert cid not in await listed(sms, ADMIN, "unread")
    assert await listed(sms, ADMIN, "NOT unread", marker) == [cid]
    await inbound(ingest, f"again {marker}", number=number)
    assert await listed(sms, ADMIN, "unread", marker) == [cid]
    await inbound(ingest, "STOP", number=number)  # the keyword alone; the number finds it from here on
    assert await listed(sms, ADMIN, "opted_out", number) == [cid]
    assert cid in await listed(sms, ADMIN, "opted_out")  # without a query: from the flag's own index
    await inbound(ingest, "START", number=number)
    assert await listed(sms, ADMIN, "opted_out", number) == []
    assert cid not in await listed(sms, ADMIN, "opted_out")
    assert cid in await listed(sms, ADMIN, "unread")
    assert await listed(sms, ADMIN, "NOT opted_out AND unread", number) == [cid]


async def test_unassigned_filter(sms: Stub, ingest: ingest_pb2_grpc.SmsIngestServiceAsyncStub) -> None:
    marker = word()
    number = await inbound(ingest, f"hello {marker}")
    admin_ids = await listed(sms, ADMIN, "unassigned", query=marker)
    assert len(admin_ids) == 1
    agent_ids = await listed(sms, auth(unique_user()), "unassigned", query=marker)
    assert agent_ids == admin_ids  # visible to agents by default (SMS_UNASSIGNED_VISIBLE_TO_AGENTS)
    assert await listed(sms, ADMIN, "NOT unassigned", query=marker) == []
    # Once an agent replies, it is theirs and leaves the unassigned view.
    owner = unique_user()
    await send(sms, owner, "on it", to=number)
    assert await listed(sms, ADMIN, "unassigned", query=number) == []
    assert await listed(sms, auth(owner), f'assignee = "{owner}"', query=number) == admin_ids


async def test_list_is_newest_first_and_pages_without_gaps(sms: Stub) -> None:
    agent = unique_user()
    label = word()
    made = []
    for i in range(7):
        cid = (await send(sms, agent, f"message {i}")).message.conversation_id
        await update(sms, cid, labels=[label])
        made.append(cid)
    newest_first = list(reversed(made))
    for size in (1, 2, 3, 7, 50):
        assert await listed(sms, auth(agent), f'label = "{label}"', page_size=size) == newest_first
    # Unfiltered, an agent's list also holds the unassigned conversations other tests leave: theirs come in order.
    unfiltered = await listed(sms, auth(agent), page_size=2)
    assert [cid for cid in unfiltered if cid in made] == newest_first


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("OR", "unknown field"),
        ("unread OR opted_out", "OR is not supported"),
        ("(unread)", "parentheses are not supported"),
        ("starred", "unknown field 'starred'"),
        ("unread AND", "missing after AND"),
        ("unread opted_out", "expected AND"),
        ('label = "vip', "unterminated string"),
        ("label > 3", "supports : and = only"),
        ("contact_id:x", "supports = only"),
        ("label =", "needs a value"),
        ("unread = true", "takes no operator"),
        ('NOT label = "x"', "NOT is supported only before"),
        ("unread AND NOT unread", "opposite meanings"),
        ('contact_id = "a" AND contact_id = "b"', "twice with different values"),
        ("unread & opted_out", "unexpected '&'"),
    ],
)
async def test_bad_filters_are_named(sms: Stub, text: str, expected: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sms.ListConversations(sms_pb2.ListConversationsRequest(filter=text), metadata=ADMIN)
    invalid(err.value, "filter", Reason.INVALID_FILTER)
    assert expected in (err.value.details() or ""), err.value.details()


async def test_agents_filter_by_their_own_assignee_only(sms: Stub) -> None:
    agent, other = unique_user(), unique_user()
    await send(sms, other, "theirs")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sms.ListConversations(
            sms_pb2.ListConversationsRequest(filter=f'assignee = "{other}"'), metadata=auth(agent)
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(err.value) == Reason.FILTER_NOT_ALLOWED.value


# ---------------------------------------------------------------------------------------------------------
# Query


async def test_query_finds_the_number_in_any_format(sms: Stub) -> None:
    agent = unique_user()
    number = unique_number()  # +1415555xxxx or +1628555xxxx
    cid = (await send(sms, agent, "hi", to=number)).message.conversation_id
    national = f"({number[2:5]}) {number[5:8]}-{number[8:]}"
    for query in (
        number,
        number[2:],
        national,
        national[:-2],
        f"{number[2:5]}.{number[5:8]}.{number[8:]}",
        number[-6:],
    ):
        assert cid in await listed(sms, auth(agent), query=query), query
    assert await listed(sms, auth(agent), query="(999) 000-") == []


async def test_query_finds_name_and_last_message_case_and_accents_ignored(sms: Stub) -> None:
    agent = unique_user()
    name_word, body_word = word(), word()
    named = (await send(sms, agent, "hello")).message.conversation_id
    await update(sms, named, contact_name=f"Zoë {name_word.capitalize()}")
    talked = (await send(sms, agent, f"Your ORDER {body_word.upper()} shipped")).message.conversation_id
    me = auth(agent)
    assert await listed(sms, me, query=name_word) == [named]
    assert await listed(sms, me, query=f"zoe {name_word[:5]}") == [named]  # prefixes, accents folded
    assert await listed(sms, me, query=f"{body_word} order") == [talked]
    assert await listed(sms, me, query=f"{body_word} nothere") == []
    # The preview follows the last message: the old words stop matching.
    await send(
        sms,
        agent,
        "something else entirely",
        to=(
            await sms.GetConversation(sms_pb2.GetConversationRequest(conversation_id=talked), metadata=me)
        ).conversation.contact_number,
    )
    assert await listed(sms, me, query=body_word) == []
    # A rename changes what the name finds.
    await update(sms, named, contact_name="Someone Else")
    assert await listed(sms, me, query=name_word) == []
    assert named in await listed(sms, me, query="someone")


@pytest.mark.parametrize(("query", "reason"), [("!!!", Reason.INVALID_QUERY), ("x" * 300, Reason.INPUT_TOO_LARGE)])
async def test_bad_queries(sms: Stub, query: str, reason: Reason) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sms.ListConversations(sms_pb2.ListConversationsRequest(query=query), metadata=ADMIN)
    invalid(err.value, "query", reason)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sms.SearchMessages(sms_pb2.SearchMessagesRequest(query=query), metadata=ADMIN)
    invalid(err.value, "query", reason)


# ---------------------------------------------------------------------------------------------------------
# SearchMessages


async def test_search_messages_newest_first_with_notes_and_paging(sms: Stub) -> None:
    agent = unique_user()
    marker = word()
    first = await send(sms, agent, f"first {marker}")
    await send(sms, agent, "unrelated")
    second = await send(sms, agent, f"second {marker.upper()} here")
    note = await sms.AddNote(
        sms_pb2.AddNoteRequest(
            conversation_id=first.message.conversation_id, body=f"note about {marker}", request_id=uuid.uuid4().hex
        ),
        metadata=auth(agent),
    )
    expected = [note.message.id, second.message.id, first.message.id]
    for size in (1, 2, 10):
        found = await hits(sms, auth(agent), marker, page_size=size)
        assert [h.message.id for h in found] == expected
    found = await hits(sms, auth(agent), f"{marker[:6]} note")
    assert [h.message.id for h in found] == [note.message.id]
    assert found[0].message.direction == types_pb2.DIRECTION_NOTE
    assert found[0].conversation.id == first.message.conversation_id
    assert found[0].conversation.owner == agent
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sms.SearchMessages(sms_pb2.SearchMessagesRequest(query=""), metadata=auth(agent))
    invalid(err.value, "query", Reason.INVALID_QUERY)


# ---------------------------------------------------------------------------------------------------------
# Page tokens


async def test_page_tokens_are_bound_to_filter_and_query_and_grant_nothing(sms: Stub) -> None:
    agent, other = unique_user(), unique_user()
    marker = word()
    for _ in range(3):
        await send(sms, agent, f"mine {marker}")
        await send(sms, other, f"theirs {marker}")
    page = await sms.ListConversations(
        sms_pb2.ListConversationsRequest(query=marker, page_size=1), metadata=auth(agent)
    )
    assert page.next_page_token
    for request in (
        sms_pb2.ListConversationsRequest(query=marker + "x", page_token=page.next_page_token),
        sms_pb2.ListConversationsRequest(filter="unread", query=marker, page_token=page.next_page_token),
        sms_pb2.ListConversationsRequest(page_token=page.next_page_token),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await sms.ListConversations(request, metadata=auth(agent))
        invalid(err.value, "page_token", Reason.INVALID_PAGE_TOKEN)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sms.SearchMessages(
            sms_pb2.SearchMessagesRequest(query=marker, page_token=page.next_page_token), metadata=auth(agent)
        )
    invalid(err.value, "page_token", Reason.INVALID_PAGE_TOKEN)
    # The other agent's token continues only their own list: a token is a position, never an entitlement.
    theirs = await sms.ListConversations(
        sms_pb2.ListConversationsRequest(query=marker, page_size=1), metadata=auth(other)
    )
    rest = await sms.ListConversations(
        sms_pb2.ListConversationsRequest(query=marker, page_token=theirs.next_page_token), metadata=auth(agent)
    )
    assert all(c.owner == agent for c in rest.conversations)
    hit_page = await sms.SearchMessages(sms_pb2.SearchMessagesRequest(query=marker, page_size=1), metadata=auth(other))
    rest_hits = await sms.SearchMessages(
        sms_pb2.SearchMessagesRequest(query=marker, page_token=hit_page.next_page_token), metadata=auth(agent)
    )
    assert rest_hits.hits and all(h.conversation.owner == agent for h in rest_hits.hits)


# ---------------------------------------------------------------------------------------------------------
# Isolation


async def test_agents_never_see_another_agents_conversations_or_messages(
    sms: Stub, ingest: ingest_pb2_grpc.SmsIngestServiceAsyncStub
) -> None:
    alice, bob = unique_user(), unique_user()
    marker, label = word(), word()
    crm = f"crm-{uuid.uuid4().hex[:8]}"
    theirs = (await send(sms, bob, f"secret {marker}", contact_id=crm)).message.conversation_id
    await update(sms, theirs, labels=[label], contact_name=f"Bobs {marker}")
    await sms.AddNote(
        sms_pb2.AddNoteRequest(conversation_id=theirs, body=f"note {marker}", request_id=uuid.uuid4().hex),
        metadata=auth(bob),
    )
    open_number = await inbound(ingest, f"unassigned {marker}")
    a = auth(alice)
    for flt in (
        "",
        "unread",
        "NOT unread",
        "opted_out",
        "NOT opted_out",
        f'label = "{label}"',
        f'contact_id = "{crm}"',
        f'assignee = "{alice}"',
        "unassigned",
        "NOT unassigned",
    ):
        for query in ("", marker, "secret", "bobs"):
            ids = await listed(sms, a, flt, query)
            assert theirs not in ids, (flt, query)
    found = await hits(sms, a, marker)
    assert {h.conversation.contact_number for h in found} == {open_number}
    assert all(h.conversation.owner == "" for h in found)
    assert theirs in await listed(sms, auth(bob), query=marker)
    bobs = {h.conversation.id: h.conversation.owner for h in await hits(sms, auth(bob), marker)}
    assert bobs.get(theirs) == bob and set(bobs.values()) == {bob, ""}  # his own and the unassigned one


@pytest.fixture(scope="module")
def hidden_unassigned(base_env: dict[str, str]) -> Iterator[str]:
    """A server on the session's database where agents do not see unassigned conversations."""
    proc, addr = start_server({**base_env, "SMS_UNASSIGNED_VISIBLE_TO_AGENTS": "false"})
    yield addr
    proc.stop()


async def test_unassigned_hidden_from_agents_when_the_setting_is_off(
    hidden_unassigned: str, ingest: ingest_pb2_grpc.SmsIngestServiceAsyncStub
) -> None:
    marker = word()
    await inbound(ingest, f"unassigned {marker}")
    async with grpc.aio.insecure_channel(hidden_unassigned) as ch:
        stub = sms_pb2_grpc.SmsServiceStub(ch)
        agent = auth(unique_user())
        assert await listed(stub, agent, query=marker) == []
        assert await listed(stub, agent, "unassigned") == []
        assert await hits(stub, agent, marker) == []
        assert len(await listed(stub, ADMIN, "unassigned", marker)) == 1
        assert len(await hits(stub, ADMIN, marker)) == 1
