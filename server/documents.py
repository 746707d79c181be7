"""The stored documents: one typed schema for messages and conversations, and the builders of new ones.

Field names are the ones in MongoDB. A message's worker fields (`in_flight`, `retry_at`, `send_due`, ...) are
absent until the worker writes them; fields behind sparse indexes are never stored as null (see store.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal, NotRequired, Required, TypedDict

from bson import ObjectId
from bson.errors import InvalidId

from server import status as st

# A partial document: a filter, or the fields of an update. Whole documents use the types below.
Fields = dict[str, Any]

# A note is an agent's internal message in the thread: no numbers, no status, never sent (AddNote).
Direction = Literal["outbound", "inbound", "note"]

PREVIEW_CHARS = 160

# The owner of a conversation nobody owns yet (an inbound from a new contact). Not a user id: a token's subject
# is never empty, so no user can be this owner. Admins and services see such a conversation, agents too while
# SMS_UNASSIGNED_VISIBLE_TO_AGENTS is on (server/visibility.py); an agent claims it (AssignConversation, or a reply).
UNASSIGNED = ""


class MediaDoc(TypedDict):
    url: str
    content_type: str


class ParamDoc(TypedDict):
    """One webhook parameter. Names are stored as values, never as field names: Twilio's posts are signed but
    their parameter names are not ours, and a name such as `$where` or `a.b` is not a safe MongoDB field name."""

    name: str
    value: str


def params_doc(params: Mapping[str, str]) -> list[ParamDoc]:
    """Parameters as stored: name/value pairs in the order given."""
    return [{"name": name, "value": value} for name, value in params.items()]


def params_of(doc: MessageDoc) -> dict[str, str]:
    """A stored message's parameters by name (also from messages stored before pairs, as a sub-document)."""
    stored: Any = doc.get("params") or []
    if isinstance(stored, dict):
        return {str(k): str(v) for k, v in stored.items()}
    return {p["name"]: p["value"] for p in stored}


class StatusEntry(TypedDict):
    """One line of a message's status history; `applied` is False for a status that arrived out of order."""

    status: str
    time: datetime
    applied: bool
    error_code: NotRequired[int]
    error_message: NotRequired[str]


class InFlight(TypedDict):
    """An attempt that may have reached Twilio: recorded before the request leaves (persist, then act)."""

    at: datetime
    attempt: int


class LastError(TypedDict):
    code: int
    message: str
    at: datetime


# Functional form: `from` is a Python keyword.
MessageDoc = TypedDict(
    "MessageDoc",
    {
        "_id": ObjectId,
        "conversation_id": Required[str],
        "direction": Required[Direction],
        "from": Required[str],
        "to": Required[str],
        "body": Required[str],
        "media": Required[list[MediaDoc]],
        "status": Required[str],
        "status_history": Required[list[StatusEntry]],
        "owner": Required[str],
        "contact_id": Required[str],
        "attempts": Required[int],
        "created": Required[datetime],
        "updated": Required[datetime],
        # Set while the effects of a new message (counts, events, send job) are not all applied yet.
        "pending": datetime,
        # Outbound: who sent it (differs from the owner when an admin sends) and Send's idempotency key.
        "sender": str,
        # Who wrote it: the sender of an outbound message, the writer of a note; absent for inbound.
        "author": str,
        "fingerprint": str,
        "request_id": str,
        "request_key": str,
        # Twilio's side.
        "twilio_sid": str,
        "twilio_status": str,
        "twilio_from": str,
        "segments": int,
        "price": str,
        "price_unit": str,
        "error_code": int,
        "error_message": str,
        # Inbound: the webhook's other parameters.
        "params": list[ParamDoc],
        # Outbound: the body's encoding ("GSM-7" or "UCS-2", server/segments.py); `segments` is counted with it.
        "encoding": str,
        # A SCHEDULED message: when it is due, and why it waits ("requested": send later; "quiet_hours").
        "send_at": datetime,
        "schedule_reason": str,
        # RetryMessage's links: the failed message this one sends again, and the message that sent this one again.
        "retry_of": str,
        "retried_by": str,
        # The worker's bookkeeping.
        "in_flight": InFlight | None,
        # A Twilio slot reserved by per-sender pacing for a later run (server/worker/pacing.py).
        "paced_until": datetime | None,
        "retry_at": datetime | None,
        "send_due": datetime | None,
        "sent_at": datetime | None,
        "last_error": LastError,
    },
    total=False,
)


# One change of a conversation's assignee: who made it, from whom, to whom, when. Functional form: `from`.
AssignmentEntry = TypedDict("AssignmentEntry", {"actor": str, "from": str, "to": str, "time": datetime})

# The assignment history keeps the latest this many changes, so a conversation (and its event) stays bounded.
ASSIGNMENT_HISTORY_MAX = 100


def assignment_entry(actor: str, previous: str, assignee: str, at: datetime) -> AssignmentEntry:
    """The history line of one change of assignee (UNASSIGNED on either side for none)."""
    return {"actor": actor, "from": previous, "to": assignee, "time": at}


class ConversationDoc(TypedDict):
    """One conversation per pair of our sender and a contact number."""

    _id: str
    our_number: str
    contact_number: str
    contact_id: str
    # The user id it belongs to, or UNASSIGNED.
    owner: str
    last_message_preview: str
    last_message_at: datetime
    last_message_direction: str
    unread_count: int
    message_count: int
    opted_out: bool
    created: datetime
    updated: datetime
    # Absent on conversations stored before they existed: read with .get().
    contact_name: NotRequired[str]
    labels: NotRequired[list[str]]
    # The contact's IANA time zone for quiet hours, when set (UpdateConversation); else the number's zones apply.
    time_zone: NotRequired[str]
    # Oldest first; the latest ASSIGNMENT_HISTORY_MAX changes.
    assignment_history: NotRequired[list[AssignmentEntry]]


def conversation_id(our_number: str, contact_number: str) -> str:
    """The one conversation per pair of our number and contact number, stable across replicas."""
    digest = hashlib.sha256(f"{our_number}|{contact_number}".encode()).hexdigest()
    return f"c{digest[:24]}"


def message_oid(message_id: str) -> ObjectId | None:
    """The ObjectId of a public message id, or None when it cannot be one."""
    try:
        return ObjectId(message_id)
    except (InvalidId, TypeError):
        return None


def preview(body: str, media_count: int) -> str:
    """The conversation list's one-line view of a message."""
    if body:
        return body[:PREVIEW_CHARS]
    return f"[{media_count} attachment{'s' if media_count != 1 else ''}]" if media_count else ""


def new_conversation(
    our_number: str, contact_number: str, owner: str, contact_id: str, at: datetime
) -> ConversationDoc:
    """A conversation with no messages yet."""
    return {
        "_id": conversation_id(our_number, contact_number),
        "our_number": our_number,
        "contact_number": contact_number,
        "contact_id": contact_id,
        "owner": owner,
        "last_message_preview": "",
        "last_message_at": at,
        "last_message_direction": "",
        "unread_count": 0,
        "message_count": 0,
        "opted_out": False,
        "created": at,
        "updated": at,
    }


def _new_message(
    conv: ConversationDoc,
    direction: Direction,
    sender: str,
    recipient: str,
    body: str,
    media: list[MediaDoc],
    status: str,
    status_at: datetime,
    at: datetime,
) -> MessageDoc:
    return {
        "conversation_id": conv["_id"],
        "direction": direction,
        "from": sender,
        "to": recipient,
        "body": body,
        "media": media,
        "status": status,
        "status_history": [{"status": status, "time": status_at, "applied": True}],
        "owner": conv["owner"],
        "contact_id": conv.get("contact_id", ""),
        "attempts": 0,
        "pending": at,
        "created": at,
        "updated": at,
    }


def new_outbound(
    conv: ConversationDoc,
    *,
    from_number: str,
    to: str,
    body: str,
    media_urls: tuple[str, ...],
    sender: str,
    contact_id: str,
    fingerprint: str,
    request_id: str,
    request_key: str,
    encoding: str,
    segments: int,
    at: datetime,
    send_at: datetime | None = None,
    schedule_reason: str = "",
    retry_of: str = "",
) -> MessageDoc:
    """A message Send accepted: QUEUED, or SCHEDULED for `send_at`; pending until its effects and job are applied."""
    media: list[MediaDoc] = [{"url": u, "content_type": ""} for u in media_urls]
    status = st.QUEUED if send_at is None else st.SCHEDULED
    doc = _new_message(conv, "outbound", from_number, to, body, media, status, at, at)
    if send_at is not None:
        doc["send_at"] = send_at
        doc["schedule_reason"] = schedule_reason
    if retry_of:
        doc["retry_of"] = retry_of
    doc["encoding"] = encoding
    doc["segments"] = segments
    doc["sender"] = sender
    doc["author"] = sender
    doc["contact_id"] = contact_id or conv.get("contact_id", "")
    doc["fingerprint"] = fingerprint
    if request_key:
        doc["request_id"] = request_id
        doc["request_key"] = request_key
    return doc


def new_inbound(
    conv: ConversationDoc,
    *,
    sid: str,
    from_number: str,
    to_number: str,
    body: str,
    media: list[MediaDoc],
    segments: int,
    params: dict[str, str],
    received: datetime,
    at: datetime,
) -> MessageDoc:
    """A message a contact sent us: RECEIVED at `received`, pending until its effects are applied."""
    doc = _new_message(conv, "inbound", from_number, to_number, body, media, st.RECEIVED, received, at)
    doc["twilio_sid"] = sid
    doc["segments"] = segments
    doc["params"] = params_doc(params)
    return doc


def new_note(
    conv: ConversationDoc,
    *,
    author: str,
    body: str,
    fingerprint: str,
    request_id: str,
    request_key: str,
    at: datetime,
) -> MessageDoc:
    """An internal note in the thread: no numbers and no status (never sent), pending until its effects apply."""
    doc = _new_message(conv, "note", "", "", body, [], "", at, at)
    doc["status_history"] = []
    doc["author"] = author
    doc["fingerprint"] = fingerprint
    if request_key:
        doc["request_id"] = request_id
        doc["request_key"] = request_key
    return doc
