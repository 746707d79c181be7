"""The agent's inbox calls of issue 11: UpdateConversation, AssignConversation, AddNote and GetInboxSummary.

The rules of who may do what are in server/assignment.py and server/visibility.py; storage in server/store.py.
Every change is a conditional update on the owner read, so a concurrent change of assignee is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from sms.v1 import types_pb2

from server import limits
from server.assignment import check_assign, check_update, is_claim
from server.auth import Caller
from server.documents import UNASSIGNED, ConversationDoc, Fields, MessageDoc, assignment_entry, new_note
from server.errors import FailedPrecondition, InvalidArgument, NotFound
from server.gateway import Gateway, request_key_of
from server.quiet_hours import valid_zone
from server.reasons import Reason
from server.timeutil import now
from server.visibility import visible_owners

# UpdateConversation's update_mask paths (AIP-134); any other, or none, is INVALID_ARGUMENT.
UPDATABLE = ("contact_name", "contact_id", "labels", "time_zone")


def _changed_meanwhile() -> FailedPrecondition:
    return FailedPrecondition(
        "the conversation's assignee changed while this call ran; read it again", Reason.ASSIGNEE_CHANGED
    )


def _already_assigned() -> FailedPrecondition:
    return FailedPrecondition("the conversation is no longer unassigned", Reason.CONVERSATION_ALREADY_ASSIGNED)


def conversation_fields(conversation: types_pb2.Conversation, paths: Sequence[str]) -> Fields:
    """The stored fields an UpdateConversation sets: the mask's paths, checked and bounded (server/limits.py)."""
    limits.each("update_mask.paths", list(paths), limits.MASK_PATHS_COUNT, limits.MASK_PATH_BYTES)
    if not paths:
        raise InvalidArgument("update_mask", f"name at least one of {', '.join(UPDATABLE)}", Reason.INVALID_UPDATE_MASK)
    for path in paths:
        if path not in UPDATABLE:
            raise InvalidArgument(
                "update_mask",
                f"{limits.quote(path)} cannot be updated; only {', '.join(UPDATABLE)}",
                Reason.INVALID_UPDATE_MASK,
            )
    fields: Fields = {}
    if "contact_name" in paths:
        fields["contact_name"] = limits.text(
            "conversation.contact_name", conversation.contact_name, limits.CONTACT_NAME_BYTES
        )
    if "contact_id" in paths:
        fields["contact_id"] = limits.text("conversation.contact_id", conversation.contact_id, limits.CONTACT_ID_BYTES)
    if "labels" in paths:
        labels = list(conversation.labels)
        limits.each("conversation.labels", labels, limits.LABELS_COUNT, limits.LABEL_BYTES)
        for i, label in enumerate(labels):
            if not label.strip():
                raise InvalidArgument(f"conversation.labels[{i}]", "a label may not be empty")
        fields["labels"] = list(dict.fromkeys(labels))  # each once, in the order given
    if "time_zone" in paths:
        zone = limits.text("conversation.time_zone", conversation.time_zone, limits.TIME_ZONE_BYTES)
        if zone and not valid_zone(zone):
            raise InvalidArgument("conversation.time_zone", f"{limits.quote(zone)} is not an IANA time zone")
        fields["time_zone"] = zone
    return fields


class Inbox:
    """The calls that change who holds a conversation and what is known about it, and the caller's counts."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.cfg = gateway.cfg
        self.store = gateway.store
        self.events = gateway.events

    async def _current(self, cid: str) -> ConversationDoc:
        conv = await self.store.get_conversation(cid)
        assert conv is not None  # a conversation is never deleted
        return conv

    # UpdateConversation

    async def update(
        self, caller: Caller, conversation: types_pb2.Conversation, paths: Sequence[str]
    ) -> ConversationDoc:
        """Sets the masked fields when the caller may (assignee, admin, service); a conversation-updated event."""
        cid = limits.ident("conversation.id", conversation.id)
        if not cid:
            raise InvalidArgument("conversation.id", "required")
        fields = conversation_fields(conversation, paths)
        conv = await self.gateway.conversation_for(caller, cid)
        check_update(caller, conv["owner"])
        # Conditional on the owner the permission was checked against: a transfer in between is not overridden.
        if not await self.store.update_conversation(cid, conv["owner"], fields):
            raise _changed_meanwhile()
        fresh = await self._current(cid)
        await self.events.conversation(fresh)
        return fresh

    # AssignConversation

    async def assign(self, caller: Caller, cid: str, assignee: str) -> ConversationDoc:
        """Moves the conversation to `assignee` (UNASSIGNED: nobody) by the rules of server/assignment.py.

        One conditional update moves the owner and appends the history entry; of concurrent claims exactly one
        matches, the others are FAILED_PRECONDITION (CONVERSATION_ALREADY_ASSIGNED). Messages follow, and a
        conversation-updated event carrying both owners reaches the old and the new assignee's streams.
        Assigning to the current assignee changes nothing (no history entry, no event).
        """
        if not cid:
            raise InvalidArgument("conversation_id", "required")
        limits.text("assignee", assignee, limits.USER_ID_BYTES)
        claim = is_claim(caller, assignee) and self.cfg.unassigned_visible_to_agents
        if claim:
            # A claim is answered by the conversation's state, not by visibility: a claimer who reads after the
            # winner's write learns it was taken (as Send's claim by reply does), without learning by whom.
            conv = await self.store.get_conversation(cid)
            if conv is None:
                raise NotFound(f"conversation {cid} not found", Reason.CONVERSATION_NOT_FOUND)
            current = conv["owner"]
            if current == assignee:
                return conv
            if current != UNASSIGNED:
                raise _already_assigned()
        else:
            conv = await self.gateway.conversation_for(caller, cid)
            current = conv["owner"]
            if current == assignee:
                return conv
            check_assign(caller, current, assignee)
        if not await self.store.assign(cid, current, assignment_entry(caller.user_id, current, assignee, now())):
            raise _already_assigned() if claim else _changed_meanwhile()
        await self.store.reassign_messages(cid, assignee)
        fresh = await self._current(cid)
        if fresh["owner"] != assignee:
            # Another change landed after ours: the messages follow whoever holds it now.
            await self.store.reassign_messages(cid, fresh["owner"])
        await self.events.conversation(fresh, previous_owner=current)
        return fresh

    # AddNote

    async def add_note(self, caller: Caller, cid: str, body: str, request_id: str) -> tuple[MessageDoc, bool]:
        """Stores a note in the thread and announces it like any new message; never enqueued, never sent.

        Idempotent on `request_id` per user, in the same key space as Send's: a repeat answers the stored note,
        and a key used for another note or a Send is ALREADY_EXISTS (REQUEST_ID_REUSED).
        """
        if not cid:
            raise InvalidArgument("conversation_id", "required")
        limits.text("body", body, limits.NOTE_BODY_BYTES)
        if not body.strip():
            raise InvalidArgument("body", "required")
        limits.text("request_id", request_id, limits.REQUEST_ID_BYTES)
        conv = await self.gateway.conversation_for(caller, cid)
        fingerprint = hashlib.sha256(json.dumps(["note", cid, body]).encode()).hexdigest()
        request_key = request_key_of(caller, request_id)
        repeat = await self.gateway.earlier_request(request_key, fingerprint)
        if repeat is not None:
            return repeat
        doc = new_note(
            conv,
            author=caller.user_id,
            body=body,
            fingerprint=fingerprint,
            request_id=request_id,
            request_key=request_key,
            at=now(),
        )
        return await self.gateway.store_request(doc, request_key, fingerprint)

    # GetInboxSummary

    async def summary(self, caller: Caller) -> tuple[int, int, int]:
        """(mine, unread, unassigned): assigned to the caller; with unread messages among those the caller may
        see; unassigned, when the caller may see those (admins and services always), else 0."""
        owners = visible_owners(self.cfg, caller)
        mine = await self.store.count_conversations(caller.user_id)
        unread = await self.store.count_unread(owners)
        unassigned = await self.store.count_conversations(UNASSIGNED) if owners is None or UNASSIGNED in owners else 0
        return mine, unread, unassigned
