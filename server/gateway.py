"""The business rules, each in one place: access, idempotency, status ranks, opt-out, inbound dedupe."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from bson import ObjectId
from pymongo.errors import DuplicateKeyError
from sms.v1 import types_pb2

from server import paging
from server import status as st
from server.auth import Caller
from server.config import Config
from server.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from server.events import EventLog
from server.phone import normalise_lenient, to_e164
from server.send_queue import SendQueue
from server.store import Doc, Store, conversation_id, message_oid
from server.timeutil import now

log = logging.getLogger(__name__)

MAX_BODY = 1600
MAX_MEDIA = 10
OPT_OUT_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
OPT_IN_WORDS = frozenset({"START", "UNSTOP", "YES"})
UNSUBSCRIBED_CODE = 21610
_STATUS_RETRIES = 8
# A stored message still `pending` this long after its insert was abandoned half-way (every caller's
# deadline is far shorter), so a replay or the reconciler may finish it.
PENDING_GRACE = timedelta(seconds=30)


def opt_keyword(body: str) -> bool | None:
    """True for an opt-out keyword sent alone, False for an opt-in one, None otherwise."""
    word = body.strip().upper()
    if word in OPT_OUT_WORDS:
        return True
    if word in OPT_IN_WORDS:
        return False
    return None


@dataclass(frozen=True)
class SendInput:
    """What a caller asked Send to do, validated and normalised."""

    to: str
    body: str
    media_urls: tuple[str, ...]
    contact_id: str
    request_id: str

    def fingerprint(self) -> str:
        """Identifies the payload, so a reused request id with a different payload is caught."""
        raw = json.dumps([self.to, self.body, list(self.media_urls), self.contact_id])
        return hashlib.sha256(raw.encode()).hexdigest()


def validate_send(
    cfg: Config, to: str, body: str, media_urls: list[str], contact_id: str, request_id: str
) -> SendInput:
    """Send's input rules; InvalidArgument naming the offending field."""
    number = to_e164(to, cfg.default_region, "to")
    if len(media_urls) > MAX_MEDIA:
        raise InvalidArgument("media_urls", f"at most {MAX_MEDIA} media URLs")
    for url in media_urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidArgument("media_urls", f"{url!r} is not an http(s) URL")
    if not body and not media_urls:
        raise InvalidArgument("body", "a body is required when no media is given")
    if len(body) > MAX_BODY:
        raise InvalidArgument("body", f"at most {MAX_BODY} characters, got {len(body)}")
    if len(request_id) > 200:
        raise InvalidArgument("request_id", "at most 200 characters")
    return SendInput(number, body, tuple(media_urls), contact_id, request_id)


class Gateway:
    """Everything the servicers and the worker do to messages and conversations."""

    def __init__(self, cfg: Config, store: Store, events: EventLog, queue: SendQueue) -> None:
        self.cfg = cfg
        self.store = store
        self.events = events
        self.queue = queue
        # Our side of every conversation, normalised once so outbound and inbound name the same conversation.
        self.our_number = normalise_lenient(cfg.our_number, cfg.default_region)

    # Access

    def _may_see(self, caller: Caller, conversation: Doc) -> bool:
        return caller.sees_all or conversation.get("owner") == caller.user_id

    async def conversation_for(self, caller: Caller, cid: str) -> Doc:
        """The conversation when the caller may see it; NOT_FOUND otherwise (existence is not leaked)."""
        if not cid:
            raise InvalidArgument("conversation_id", "required")
        conv = await self.store.get_conversation(cid)
        if conv is None or not self._may_see(caller, conv):
            raise NotFound(f"conversation {cid} not found", "CONVERSATION_NOT_FOUND")
        return conv

    async def message_for(self, caller: Caller, message_id: str) -> Doc:
        """The message when the caller may see its conversation; NOT_FOUND otherwise."""
        if not message_id:
            raise InvalidArgument("message_id", "required")
        doc = await self.store.get_message(message_id)
        if doc is not None and not caller.sees_all:
            # Access follows the conversation, the one owner record (a message's copy can lag a claim).
            conv = await self.store.get_conversation(doc["conversation_id"])
            if conv is None or not self._may_see(caller, conv):
                doc = None
        if doc is None:
            raise NotFound(f"message {message_id} not found", "MESSAGE_NOT_FOUND")
        return doc

    # Send

    async def send(self, caller: Caller, req: SendInput) -> tuple[Doc, bool]:
        """Stores the message as QUEUED, then queues it; returns it and whether it was a repeat."""
        fingerprint = req.fingerprint()
        # Keys are per user: the sender's, which differs from the owner when an admin sends.
        request_key = f"{caller.user_id}\x1f{req.request_id}" if req.request_id else ""
        if request_key:
            earlier = await self.store.find_by_request(request_key)
            if earlier is not None:
                return await self._same_request(earlier, fingerprint), True
        conv = await self._conversation_to_send(caller, req)
        t = now()
        doc: Doc = {
            "conversation_id": conv["_id"],
            "direction": "outbound",
            "from": self.our_number,
            "to": req.to,
            "body": req.body,
            "media": [{"url": u, "content_type": ""} for u in req.media_urls],
            "status": st.QUEUED,
            "status_history": [{"status": st.QUEUED, "time": t, "applied": True}],
            "owner": conv["owner"],
            "sender": caller.user_id,
            "contact_id": req.contact_id or conv.get("contact_id", ""),
            "attempts": 0,
            "fingerprint": fingerprint,
            "pending": t,
            "created": t,
            "updated": t,
        }
        if request_key:
            doc["request_id"] = req.request_id
            doc["request_key"] = request_key
        try:
            await self.store.insert_message(doc)
        except DuplicateKeyError:
            # A concurrent Send with the same key won the insert.
            earlier = await self.store.find_by_request(request_key)
            if earlier is None:
                raise
            return await self._same_request(earlier, fingerprint), True
        await self.finish(doc)
        return doc, False

    async def _same_request(self, earlier: Doc, fingerprint: str) -> Doc:
        if earlier.get("fingerprint") != fingerprint:
            raise AlreadyExists("request_id was already used with a different payload", "REQUEST_ID_REUSED")
        return await self._replayed(earlier)

    # What follows storing a new message

    async def finish(self, doc: Doc) -> None:
        """The effects of a newly stored message: counts, opt-out, events, and for outbound the send job.

        The message is inserted with `pending` set and it is cleared only after all of these, so a crash or a
        store error in between is repaired by a replay of the same request or by the worker's reconciler.
        """
        inbound = doc["direction"] == "inbound"
        opt = opt_keyword(doc.get("body", "")) if inbound else None
        extra = {} if opt is None else {"opted_out": opt}
        await self.store.count_message(doc["conversation_id"], doc, unread=inbound, extra=extra)
        await self.events.message(types_pb2.EVENT_TYPE_MESSAGE_CREATED, doc)
        await self._conversation_changed(doc["conversation_id"])
        if not inbound:
            await self.queue.enqueue(str(doc["_id"]))
        await self.store.clear_pending(doc["_id"])
        doc.pop("pending", None)

    async def _replayed(self, doc: Doc) -> Doc:
        """A repeat of a stored message; finishes it first when its first delivery died half-way."""
        since = doc.get("pending")
        # A young marker means the first delivery may still be running; should it die, the reconciler finishes.
        if since is not None and now() - since >= PENDING_GRACE:
            await self.resume_pending(doc)
        return doc

    async def resume_pending(self, doc: Doc) -> None:
        """Finishes a message abandoned half-way (see `finish`), unless another replica just took it over."""
        if await self.store.claim_pending(doc["_id"], doc["pending"]):
            log.warning("finishing message %s whose first delivery stopped half-way", doc["_id"])
            await self.finish(doc)

    async def _conversation_to_send(self, caller: Caller, req: SendInput) -> Doc:
        cid = conversation_id(self.our_number, req.to)
        conv = await self.store.get_conversation(cid)
        if conv is None:
            t = now()
            conv = await self.store.create_conversation(
                {
                    "_id": cid,
                    "our_number": self.our_number,
                    "contact_number": req.to,
                    "contact_id": req.contact_id,
                    "owner": caller.user_id,
                    "last_message_preview": "",
                    "last_message_at": t,
                    "last_message_direction": "",
                    "unread_count": 0,
                    "message_count": 0,
                    "opted_out": False,
                    "created": t,
                    "updated": t,
                }
            )
        if conv.get("opted_out"):
            raise FailedPrecondition(f"{req.to} has opted out (STOP); they must text START first", "OPTED_OUT")
        if caller.sees_all or conv["owner"] == caller.user_id:
            return conv
        # Unassigned inbound conversations go to the first agent who answers.
        if conv["owner"] == self.cfg.default_owner and await self.store.claim_conversation(
            cid, self.cfg.default_owner, caller.user_id, req.contact_id
        ):
            await self.store.messages.update_many({"conversation_id": cid}, {"$set": {"owner": caller.user_id}})
            conv = await self.store.get_conversation(cid)
            assert conv is not None
            return conv
        raise PermissionDenied("this contact's conversation belongs to another agent", "CONVERSATION_OF_ANOTHER_AGENT")

    # Reading

    async def list_conversations(self, caller: Caller, size: int, token: str) -> tuple[list[Doc], str]:
        limit = paging.page_size(size)
        after = paging.decode_token("conversations", token)
        owner = None if caller.sees_all else caller.user_id
        docs = await self.store.list_conversations(owner, after, limit + 1)
        return self._page("conversations", docs, limit, "last_message_at", lambda d: str(d["_id"]))

    async def list_messages(self, caller: Caller, cid: str, size: int, token: str) -> tuple[list[Doc], str]:
        limit = paging.page_size(size)
        position = paging.decode_token("messages", token)
        conv = await self.conversation_for(caller, cid)
        after: tuple[datetime, ObjectId] | None = None
        if position is not None:
            oid = message_oid(position[1])
            if oid is None:
                raise InvalidArgument("page_token", "malformed page token", "INVALID_PAGE_TOKEN")
            after = (position[0], oid)
        docs = await self.store.list_messages(conv["_id"], after, limit + 1)
        return self._page("messages", docs, limit, "created", lambda d: str(d["_id"]))

    @staticmethod
    def _page(kind: str, docs: list[Doc], limit: int, time_field: str, key: Any) -> tuple[list[Doc], str]:
        if len(docs) <= limit:
            return docs, ""
        page = docs[:limit]
        last = page[-1]
        return page, paging.encode_token(kind, last[time_field], key(last))

    async def mark_read(self, caller: Caller, cid: str) -> Doc:
        conv = await self.conversation_for(caller, cid)
        if await self.store.mark_read(cid):
            return await self._conversation_changed(cid) or conv
        return conv

    async def _conversation_changed(self, cid: str) -> Doc | None:
        """Reads the conversation as it now is and appends its event."""
        conv = await self.store.get_conversation(cid)
        if conv is not None:
            await self.events.conversation(conv)
        return conv

    # Inbound

    async def record_inbound(
        self,
        sid: str,
        from_raw: str,
        to_raw: str,
        body: str,
        media: list[Doc],
        segments: int,
        params: dict[str, str],
        received: datetime | None,
        messaging_service_sid: str = "",
    ) -> tuple[Doc, bool]:
        """Stores an inbound message once per sid; returns it and whether it was a replay."""
        if not sid:
            raise InvalidArgument("message_sid", "required")
        if not from_raw or not to_raw:
            raise InvalidArgument("from_number" if not from_raw else "to_number", "required")
        contact = normalise_lenient(from_raw, self.cfg.default_region)
        ours = normalise_lenient(to_raw, self.cfg.default_region)
        side = self._our_side(ours, messaging_service_sid)
        cid = conversation_id(side, contact)
        t = now()
        conv = await self.store.get_conversation(cid) or await self.store.create_conversation(
            {
                "_id": cid,
                "our_number": side,
                "contact_number": contact,
                "contact_id": "",
                "owner": self.cfg.default_owner,
                "last_message_preview": "",
                "last_message_at": t,
                "last_message_direction": "",
                "unread_count": 0,
                "message_count": 0,
                "opted_out": False,
                "created": t,
                "updated": t,
            }
        )
        at = received or t
        doc: Doc = {
            "conversation_id": cid,
            "direction": "inbound",
            "from": contact,
            "to": ours,
            "body": body,
            "media": media,
            "status": st.RECEIVED,
            "status_history": [{"status": st.RECEIVED, "time": at, "applied": True}],
            "twilio_sid": sid,
            "owner": conv["owner"],
            "contact_id": conv.get("contact_id", ""),
            "segments": segments,
            "params": params,
            "attempts": 0,
            "pending": t,
            "created": t,
            "updated": t,
        }
        try:
            # Insert first: the unique sid index is the dedupe, and new messages (the common case) save a read.
            await self.store.insert_message(doc)
        except DuplicateKeyError:
            earlier = await self.store.find_by_sid(sid)
            if earlier is None:
                raise
            return await self._replayed(earlier), True
        await self.finish(doc)
        return doc, False

    def _our_side(self, to_number: str, messaging_service_sid: str) -> str:
        """Which of our senders an inbound message reached, named as Send names it.

        Sending through a Messaging Service names our side by the service's sid (Twilio picks the number),
        and Twilio tags inbound to the service's numbers with that sid, so both land in one conversation.
        """
        service = self.cfg.twilio_messaging_service_sid
        if service and not self.cfg.twilio_from_number and messaging_service_sid == service:
            return service
        return to_number

    # Status

    async def record_status(
        self, sid: str, raw_status: str, error_code: int, error_message: str, at: datetime | None
    ) -> tuple[Doc, bool]:
        """Applies a Twilio status callback by the ranking rules; returns the message and whether it moved."""
        if not sid:
            raise InvalidArgument("message_sid", "required")
        new = st.parse_status(raw_status)
        doc = await self.store.find_by_sid(sid)
        if doc is None:
            raise NotFound(f"no message with sid {sid}", "UNKNOWN_MESSAGE_SID")
        doc, applied = await self.change_status(doc, new, at=at, error_code=error_code, error_message=error_message)
        if error_code == UNSUBSCRIBED_CODE:
            await self.opt_out(doc["conversation_id"])
        return doc, applied

    async def change_status(
        self,
        doc: Doc,
        new: str,
        *,
        at: datetime | None = None,
        error_code: int = 0,
        error_message: str = "",
        set_fields: Doc | None = None,
    ) -> tuple[Doc, bool]:
        """Records `new` in the history; moves the status only up the ranks. The one status writer.

        A status already in the history is a duplicate and changes nothing. `set_fields` are written
        with the change whether or not it moves the status (the worker's sid, price, segments).
        """
        for _ in range(_STATUS_RETRIES):
            # A status already in the history is a repeat: it moves nothing and is not recorded again.
            repeat = any(h["status"] == new for h in doc.get("status_history", []))
            if repeat and not set_fields:
                return doc, False
            current = doc["status"]
            applied = not repeat and st.moves(current, new)
            fields: Doc = dict(set_fields or {})
            if applied:
                fields["status"] = new
                if new in st.FAILURES or error_code:
                    fields["error_code"] = error_code
                    fields["error_message"] = error_message
            update: Doc = {"$set": fields}
            expect: Doc = {"status": current}
            if not repeat:
                entry: Doc = {"status": new, "time": at or now(), "applied": applied}
                if error_code:
                    entry["error_code"] = error_code
                if error_message:
                    entry["error_message"] = error_message
                update["$push"] = {"status_history": entry}
                expect["status_history.status"] = {"$ne": new}
            updated = await self.store.update_message(doc, expect, update)
            if updated is not None:
                await self.events.message(types_pb2.EVENT_TYPE_MESSAGE_UPDATED, updated)
                return updated, applied
            fresh = await self.store.get_message(str(doc["_id"]))
            if fresh is None:
                raise NotFound(f"message {doc['_id']} vanished", "MESSAGE_NOT_FOUND")
            doc = fresh
        raise Aborted("message changed concurrently too often; retry", "CONCURRENT_UPDATE")

    async def opt_out(self, cid: str, opted_out: bool = True) -> None:
        """Marks a conversation opted out (STOP or Twilio 21610) or back in."""
        if await self.store.set_opted_out(cid, opted_out):
            await self._conversation_changed(cid)
