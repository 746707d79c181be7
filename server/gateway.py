"""The business rules, each in one place: access, idempotency, status ranks, opt-out, inbound dedupe."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar
from urllib.parse import urlsplit

from sms.v1 import types_pb2

from server import limits, listing, log_context, paging, scheduling, segments
from server import status as st
from server.auth import Caller
from server.config import Config
from server.convert import message_to_proto
from server.delivery_stats import DeliveryStats
from server.documents import (
    UNASSIGNED,
    ConversationDoc,
    Fields,
    MediaDoc,
    MessageDoc,
    StatusEntry,
    conversation_id,
    new_conversation,
    new_inbound,
    new_outbound,
)
from server.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from server.events import EventLog
from server.phone import check_destination, normalise_lenient, to_e164
from server.reasons import Reason
from server.store import Store
from server.timeutil import aware, now
from server.visibility import may_see
from server.worker.queue import SendQueue

log = logging.getLogger(__name__)

# A page of ListMessages stays under this many bytes of messages (see _page).
PAGE_BYTES = 2 * 1024 * 1024

OPT_OUT_WORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
OPT_IN_WORDS = frozenset({"START", "UNSTOP", "YES"})
UNSUBSCRIBED_CODE = 21610
# Twilio's codes for a number that cannot receive: invalid (21211), not a mobile number (21614). A retry would fail
# the same way.
UNREACHABLE_CODES = frozenset({21211, 21614})
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


D = TypeVar("D", ConversationDoc, MessageDoc)
# Send's admission of one more new message from a user (the rate limit); raises to refuse it.
Admission = Callable[[], Awaitable[None]]


def _page(
    kind: str,
    docs: list[D],
    limit: int,
    position: Callable[[D], tuple[datetime, str]],
    size: Callable[[D], int] | None = None,
) -> tuple[list[D], str]:
    """The first `limit` of `docs` (read one more than that) and the token of the page after them.

    With `size`, a page also ends before it outgrows PAGE_BYTES, so a page of large messages still fits a
    client's default 4 MiB receive limit (the next page continues after the last one kept; never empty).
    """
    if size is not None:
        total = 0
        for i, doc in enumerate(docs[:limit]):
            total += size(doc)
            if total > PAGE_BYTES and i > 0:
                limit = i
                break
    if len(docs) <= limit:
        return docs, ""
    page = docs[:limit]
    return page, paging.encode_token(kind, *position(page[-1]))


def _of_another_agent() -> PermissionDenied:
    """Send's refusal of a contact whose conversation another agent owns."""
    return PermissionDenied(
        "this contact's conversation belongs to another agent", Reason.CONVERSATION_OF_ANOTHER_AGENT
    )


def _already_retried(retry_id: str) -> FailedPrecondition:
    return FailedPrecondition(f"the message was already retried as {retry_id}", Reason.MESSAGE_ALREADY_RETRIED)


def _in_history(doc: MessageDoc, status: str) -> bool:
    """Whether `status` was already recorded for the message: a repeat, which moves nothing."""
    return any(h["status"] == status for h in doc.get("status_history", []))


def request_key_of(caller: Caller, request_id: str) -> str:
    """The idempotency key of a request id (AIP-155): per user, the sender's, which differs from the owner when an
    admin sends; Send and AddNote share the key space. Empty without a request id."""
    return f"{caller.user_id}\x1f{request_id}" if request_id else ""


def _same_payload(fingerprint: str) -> Callable[[MessageDoc], Awaitable[None]]:
    """The check that a repeated request id carries the payload it was first used with."""

    async def check(earlier: MessageDoc) -> None:
        if earlier.get("fingerprint") != fingerprint:
            raise AlreadyExists("request_id was already used with a different payload", Reason.REQUEST_ID_REUSED)

    return check


@dataclass(frozen=True)
class SendInput:
    """What a caller asked Send to do, validated and normalised."""

    to: str
    body: str
    media_urls: tuple[str, ...]
    contact_id: str
    request_id: str
    send_at: datetime | None = None
    ignore_quiet_hours: bool = False

    def fingerprint(self) -> str:
        """Identifies the payload, so a reused request id with a different payload is caught."""
        parts: list[object] = [self.to, self.body, list(self.media_urls), self.contact_id]
        if self.send_at is not None:
            # Only when set, so requests stored before send_at existed keep their fingerprint.
            parts.append(self.send_at.isoformat())
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def validate_send(
    cfg: Config,
    to: str,
    body: str,
    media_urls: list[str],
    contact_id: str,
    request_id: str,
    *,
    send_at: datetime | None = None,
    ignore_quiet_hours: bool = False,
) -> SendInput:
    """Send's input rules and bounds (server/limits.py); InvalidArgument naming the offending field."""
    number = to_e164(limits.text("to", to, limits.ADDRESS_BYTES), cfg.default_region, "to")
    limits.each("media_urls", media_urls, limits.MEDIA_COUNT, limits.URL_BYTES)
    for url in media_urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidArgument("media_urls", f"{limits.quote(url)} is not an http(s) URL")
    if not body and not media_urls:
        raise InvalidArgument("body", "a body is required when no media is given")
    limits.chars("body", body, limits.BODY_CHARS)
    limits.text("contact_id", contact_id, limits.CONTACT_ID_BYTES)
    limits.text("request_id", request_id, limits.REQUEST_ID_BYTES)
    if send_at is not None:
        # At MongoDB's precision, so the stored time (and the fingerprint of a repeat) reads back equal.
        send_at = send_at.replace(microsecond=send_at.microsecond // 1000 * 1000)
    return SendInput(number, body, tuple(media_urls), contact_id, request_id, send_at, ignore_quiet_hours)


class Gateway:
    """Everything the servicers and the worker do to messages and conversations."""

    def __init__(self, cfg: Config, store: Store, events: EventLog, queue: SendQueue, stats: DeliveryStats) -> None:
        self.cfg = cfg
        self.store = store
        self.events = events
        self.queue = queue
        # The delivery dashboard's counters (GetDeliveryStats), kept as messages are stored and change status.
        self.stats = stats
        # Our side of every conversation, normalised once so outbound and inbound name the same conversation.
        self.our_number = normalise_lenient(cfg.our_number, cfg.default_region)

    # Access

    def _may_see(self, caller: Caller, conversation: ConversationDoc) -> bool:
        """The one visibility rule (server/visibility.py) applied to a stored conversation."""
        return may_see(self.cfg, caller, conversation.get("owner", UNASSIGNED))

    async def conversation_for(self, caller: Caller, cid: str) -> ConversationDoc:
        """The conversation when the caller may see it; NOT_FOUND otherwise (existence is not leaked)."""
        if not cid:
            raise InvalidArgument("conversation_id", "required")
        conv = await self.store.get_conversation(cid)
        if conv is None or not self._may_see(caller, conv):
            raise NotFound(f"conversation {cid} not found", Reason.CONVERSATION_NOT_FOUND)
        return conv

    async def message_for(self, caller: Caller, message_id: str) -> MessageDoc:
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
            raise NotFound(f"message {message_id} not found", Reason.MESSAGE_NOT_FOUND)
        return doc

    # Send

    async def send(self, caller: Caller, req: SendInput, admit: Admission | None = None) -> tuple[MessageDoc, bool]:
        """Stores the message as QUEUED, then queues it; returns it and whether it was a repeat.

        A repeat of an accepted request is answered before the destination guard and `admit` (the rate limit),
        so a client retrying what was accepted is never refused for it.
        """
        with log_context.bind(request_id=req.request_id or None):
            return await self._send(caller, req, admit)

    async def _send(self, caller: Caller, req: SendInput, admit: Admission | None) -> tuple[MessageDoc, bool]:
        fingerprint = req.fingerprint()
        request_key = request_key_of(caller, req.request_id)
        repeat = await self.earlier_request(request_key, fingerprint)
        if repeat is not None:
            return repeat
        if req.send_at is not None:
            # After the repeat: a client retrying an accepted Send after its time has passed gets the message.
            scheduling.check_send_at(self.cfg, req.send_at, now())
        if req.ignore_quiet_hours and not caller.sees_all:
            raise PermissionDenied(
                "only admins may send during a contact's quiet hours", Reason.QUIET_HOURS_OVERRIDE_NOT_ALLOWED
            )
        check_destination(req.to, self.cfg.allowed_countries, self.cfg.allow_premium_numbers)
        if admit is not None:
            await admit()
        conv = await self._conversation_to_send(caller, req)
        doc = self._outbound(caller, conv, req, fingerprint, request_key)
        return await self.store_request(doc, request_key, fingerprint)

    def _outbound(
        self,
        caller: Caller,
        conv: ConversationDoc,
        req: SendInput,
        fingerprint: str,
        request_key: str,
        retry_of: str = "",
    ) -> MessageDoc:
        """The new outbound message of `req`: its encoding and segments counted, its send time planned."""
        at = now()
        count = segments.count(req.body)
        when = scheduling.plan(self.cfg, conv, req.send_at, req.ignore_quiet_hours, at)
        return new_outbound(
            conv,
            from_number=self.our_number,
            to=req.to,
            body=req.body,
            media_urls=req.media_urls,
            sender=caller.user_id,
            contact_id=req.contact_id,
            fingerprint=fingerprint,
            request_id=req.request_id,
            request_key=request_key,
            encoding=count.encoding,
            # An MMS is one message to Twilio whatever its text's length.
            segments=1 if req.media_urls else count.segments,
            at=at,
            send_at=when.send_at,
            schedule_reason=when.reason,
            retry_of=retry_of,
        )

    # Cancel and retry

    async def cancel(self, caller: Caller, message_id: str) -> MessageDoc:
        """Cancels an outbound message the worker has not begun to send: SCHEDULED or QUEUED becomes CANCELED.

        The cancel and the worker's start of an attempt are both conditional on the status they read, so exactly
        one of them moves the message: canceled with no Twilio request, or sent and the cancel refused.
        """
        doc = await self.message_for(caller, message_id)
        if doc["direction"] != "outbound":
            raise FailedPrecondition("only an outbound message can be canceled", Reason.MESSAGE_NOT_CANCELABLE)
        if doc["status"] == st.CANCELED:
            return doc
        doc, moved = await self.change_status(
            doc, st.CANCELED, set_fields={"send_due": None, "paced_until": None}, from_statuses=st.CANCELABLE
        )
        if moved:
            await self.queue.drop(message_id)
        if moved or doc["status"] == st.CANCELED:
            return doc
        if doc["status"] in st.TERMINAL or doc["status"] == st.READ:
            raise FailedPrecondition(
                f"the message is already {doc['status']} and cannot be canceled", Reason.MESSAGE_NOT_CANCELABLE
            )
        raise FailedPrecondition(
            "the worker has begun sending the message; it can no longer be canceled", Reason.MESSAGE_ALREADY_SENDING
        )

    async def retry(
        self, caller: Caller, message_id: str, request_id: str, admit: Admission | None = None
    ) -> tuple[MessageDoc, bool]:
        """Sends a FAILED or UNDELIVERED outbound message again as a new message linked to it both ways.

        Idempotent on request_id; of concurrent retries of one message (the unique `retry_of` index) one stores
        a new message, the others get it (the same request id) or MESSAGE_ALREADY_RETRIED.
        """
        original = await self.message_for(caller, message_id)
        if original["direction"] != "outbound" or original["status"] not in st.FAILURES:
            raise FailedPrecondition(
                "only a failed or undelivered outbound message can be retried", Reason.MESSAGE_NOT_RETRYABLE
            )
        oid = str(original["_id"])
        request_key = request_key_of(caller, request_id)
        fingerprint = hashlib.sha256(json.dumps(["retry", oid]).encode()).hexdigest()
        repeat = await self.earlier_request(request_key, fingerprint)
        if repeat is not None:
            return repeat
        if original.get("retried_by"):
            raise _already_retried(original["retried_by"])
        if original.get("error_code") in UNREACHABLE_CODES:
            raise FailedPrecondition(
                f"Twilio refused the number (error {original.get('error_code')}); a retry would fail the same way",
                Reason.NUMBER_NOT_RETRYABLE,
            )
        req = SendInput(
            original["to"],
            original.get("body", ""),
            tuple(m["url"] for m in original.get("media", [])),
            original.get("contact_id", ""),
            request_id,
        )
        check_destination(req.to, self.cfg.allowed_countries, self.cfg.allow_premium_numbers)
        if admit is not None:
            await admit()
        conv = await self._conversation_to_send(caller, req)
        doc = self._outbound(caller, conv, req, fingerprint, request_key, retry_of=oid)

        async def earlier() -> MessageDoc | None:
            return (await self.store.find_by_request(request_key) if request_key else None) or (
                await self.store.find_retry_of(oid)
            )

        async def check(earlier_doc: MessageDoc) -> None:
            if earlier_doc.get("request_key", "") != request_key:
                raise _already_retried(str(earlier_doc["_id"]))
            await _same_payload(fingerprint)(earlier_doc)

        return await self._store_once(doc, earlier, check)

    # Storing a new message once, and what follows it

    async def _store_once(
        self,
        doc: MessageDoc,
        find_earlier: Callable[[], Awaitable[MessageDoc | None]],
        check_earlier: Callable[[MessageDoc], Awaitable[None]] | None = None,
    ) -> tuple[MessageDoc, bool]:
        """Inserts a new message and applies its effects; on a duplicate key, replays the stored one instead.

        The unique index (sid or request key) is the dedupe: inserting first saves a read in the common case,
        and of two concurrent writers exactly one inserts. Returns the message and whether it was a repeat.
        """
        # Shielded: a caller that gives up (a deadline, a cut connection) does not stop a stored message half-way
        # through its effects; the pending marker covers only a crash.
        if await asyncio.shield(self._insert_and_finish(doc)):
            return doc, False
        earlier = await find_earlier()
        if earlier is None:
            raise Aborted("a message with the same key was stored and is gone; retry", Reason.CONCURRENT_UPDATE)
        return await self._repeat(earlier, check_earlier)

    async def _insert_and_finish(self, doc: MessageDoc) -> bool:
        """Inserts `doc` and applies its effects; False (nothing done) when its key is already stored."""
        if not await self.store.insert_new_message(doc):
            return False
        with log_context.bind(message_id=str(doc["_id"]), conversation_id=doc["conversation_id"]):
            await self.finish(doc)
            log.info("%s message stored (%s)", doc["direction"], doc["status"] or "note")
        if doc["direction"] == "outbound":
            # Here, once per insert: `finish` runs again when a half-done message is resumed.
            await self.stats.record(st.QUEUED, doc["created"])
        return True

    async def earlier_request(self, request_key: str, fingerprint: str) -> tuple[MessageDoc, bool] | None:
        """The answer to a repeated request id (Send, AddNote): the stored message; None for a new key."""
        if not request_key:
            return None
        earlier = await self.store.find_by_request(request_key)
        return None if earlier is None else await self._repeat(earlier, _same_payload(fingerprint))

    async def store_request(self, doc: MessageDoc, request_key: str, fingerprint: str) -> tuple[MessageDoc, bool]:
        """Stores a new message made under `request_key`; a concurrent twin with the same key answers the first."""
        return await self._store_once(doc, lambda: self.store.find_by_request(request_key), _same_payload(fingerprint))

    async def _repeat(
        self, earlier: MessageDoc, check_earlier: Callable[[MessageDoc], Awaitable[None]] | None
    ) -> tuple[MessageDoc, bool]:
        """The answer to a repeated request: the stored message, once `check_earlier` accepts it."""
        if check_earlier is not None:
            await check_earlier(earlier)
        return await self._replayed(earlier), True

    async def finish(self, doc: MessageDoc) -> None:
        """The effects of a newly stored message: counts, opt-out, events, and for outbound the send job.

        The message is inserted with `pending` set and it is cleared only after all of these, so a crash or a
        store error in between is repaired by a replay of the same request or by the worker's reconciler.
        """
        inbound = doc["direction"] == "inbound"
        opt = opt_keyword(doc.get("body", "")) if inbound else None
        extra = {} if opt is None else {"opted_out": opt}
        # A note is counted but stays out of the unread count and the last-message preview (what the contact and
        # we said), and is never sent.
        note = doc["direction"] == "note"
        await self.store.count_message(doc["conversation_id"], doc, unread=inbound, extra=extra, latest=not note)
        conv = await self.store.get_conversation(doc["conversation_id"])
        if conv is not None and conv["owner"] != doc["owner"]:
            # The conversation was claimed after this message copied its owner (and maybe after the claim moved
            # the other messages): the message follows its conversation, and its event reaches the new owner.
            await self.store.set_message_owner(doc["_id"], conv["owner"])
            doc["owner"] = conv["owner"]
        await self.events.message_and_conversation(types_pb2.EVENT_TYPE_MESSAGE_CREATED, doc, conv)
        retry_of = doc.get("retry_of")
        if retry_of:
            # The failed message names its retry: repeated by a replay until the pending marker is cleared.
            retried = await self.store.link_retry(retry_of, str(doc["_id"]))
            if retried is not None:
                await self.events.message(types_pb2.EVENT_TYPE_MESSAGE_UPDATED, retried)
        if doc["direction"] == "outbound":
            await self.queue.enqueue(str(doc["_id"]), doc.get("send_at") if doc["status"] == st.SCHEDULED else None)
        await self.store.clear_pending(doc["_id"])
        doc.pop("pending", None)

    async def _replayed(self, doc: MessageDoc) -> MessageDoc:
        """A repeat of a stored message; finishes it first when its first delivery died half-way."""
        since = doc.get("pending")
        # A young marker means the first delivery may still be running; should it die, the reconciler finishes.
        if since is not None and now() - since >= PENDING_GRACE:
            await self.resume_pending(doc)
        return doc

    async def resume_pending(self, doc: MessageDoc) -> None:
        """Finishes a message abandoned half-way (see `finish`), unless another replica just took it over."""
        if await self.store.claim_pending(doc["_id"], doc["pending"]):
            with log_context.bind(message_id=str(doc["_id"]), conversation_id=doc["conversation_id"]):
                log.warning("finishing a message whose first delivery stopped half-way")
                await self.finish(doc)

    async def _conversation_to_send(self, caller: Caller, req: SendInput) -> ConversationDoc:
        """The conversation Send writes to; a new one belongs to whoever starts it, admins and services too."""
        cid = conversation_id(self.our_number, req.to)
        conv = await self.store.get_conversation(cid) or await self.store.create_conversation(
            new_conversation(self.our_number, req.to, caller.user_id, req.contact_id, now())
        )
        owner = conv["owner"]
        # Access before anything else about the conversation: another agent's contact's opt-out is theirs.
        if not caller.sees_all and owner not in (caller.user_id, UNASSIGNED):
            raise _of_another_agent()
        if conv.get("opted_out"):
            raise FailedPrecondition(f"{req.to} has opted out (STOP); they must text START first", Reason.OPTED_OUT)
        if caller.sees_all or owner == caller.user_id:
            return conv
        # An unassigned conversation (an inbound from a new contact) goes to the first agent who answers.
        if not await self.store.claim_unassigned(cid, caller.user_id, req.contact_id):
            raise _of_another_agent()  # another agent claimed it first
        await self.store.reassign_messages(cid, caller.user_id)
        claimed = await self.store.get_conversation(cid)
        assert claimed is not None  # a conversation is never deleted
        # The change of assignee (recorded in its history by the claim): every agent who saw it unassigned sees
        # it go to the claimer.
        await self.events.conversation(claimed, previous_owner=UNASSIGNED)
        return claimed

    # Reading

    async def list_conversations(
        self, caller: Caller, size: int, token: str, filter_text: str = "", query: str = ""
    ) -> tuple[list[ConversationDoc], str]:
        """A page of what the caller may see, narrowed by `filter_text` and `query` (server/listing.py)."""
        return await listing.list_conversations(self.cfg, self.store, caller, size, token, filter_text, query)

    async def search_messages(
        self, caller: Caller, query: str, size: int, token: str
    ) -> tuple[list[tuple[MessageDoc, ConversationDoc]], str]:
        """A page of message hits with their conversations (server/listing.py)."""
        return await listing.search_messages(self.cfg, self.store, caller, query, size, token)

    async def list_messages(self, caller: Caller, cid: str, size: int, token: str) -> tuple[list[MessageDoc], str]:
        limit = paging.page_size(size)
        after = paging.decode_message_token("messages", token)
        conv = await self.conversation_for(caller, cid)
        docs = await self.store.list_messages(conv["_id"], after, limit + 1)
        return _page(
            "messages", docs, limit, lambda d: (d["created"], str(d["_id"])), lambda d: message_to_proto(d).ByteSize()
        )

    async def mark_read(self, caller: Caller, cid: str) -> ConversationDoc:
        conv = await self.conversation_for(caller, cid)
        if await self.store.mark_read(cid):
            return await self._conversation_changed(cid) or conv
        return conv

    async def _conversation_changed(self, cid: str) -> ConversationDoc | None:
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
        media: list[MediaDoc],
        segments: int,
        params: dict[str, str],
        received: datetime | None,
        messaging_service_sid: str = "",
    ) -> tuple[MessageDoc, bool]:
        """Stores an inbound message once per sid; returns it and whether it was a replay."""
        if not sid:
            raise InvalidArgument("message_sid", "required")
        if not from_raw or not to_raw:
            raise InvalidArgument("from_number" if not from_raw else "to_number", "required")
        contact = normalise_lenient(from_raw, self.cfg.default_region)
        ours = normalise_lenient(to_raw, self.cfg.default_region)
        side = self._our_side(ours, messaging_service_sid)
        t = now()
        conv = await self.store.get_conversation(
            conversation_id(side, contact)
        ) or await self.store.create_conversation(new_conversation(side, contact, UNASSIGNED, "", t))
        doc = new_inbound(
            conv,
            sid=sid,
            from_number=contact,
            to_number=ours,
            body=body,
            media=media,
            segments=segments,
            params=params,
            received=received or t,
            at=t,
        )
        return await self._store_once(doc, lambda: self.store.find_by_sid(sid))

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
    ) -> tuple[MessageDoc, bool]:
        """Applies a Twilio status callback by the ranking rules; returns the message and whether it moved."""
        if not sid:
            raise InvalidArgument("message_sid", "required")
        new = st.parse_status(raw_status)
        doc = await self.store.find_by_sid(sid)
        if doc is None:
            raise NotFound(f"no message with sid {sid}", Reason.UNKNOWN_MESSAGE_SID)
        return await self.change_status(doc, new, at=at, error_code=error_code, error_message=error_message)

    async def change_status(
        self,
        doc: MessageDoc,
        new: str,
        *,
        at: datetime | None = None,
        error_code: int = 0,
        error_message: str = "",
        set_fields: Fields | None = None,
        from_statuses: frozenset[str] | None = None,
    ) -> tuple[MessageDoc, bool]:
        """Records `new` in the history; moves the status only up the ranks. The one status writer.

        With `from_statuses`, nothing is written unless the message's status (read again after a lost race) is one
        of them: the worker's start of an attempt and CancelMessage exclude each other this way.

        A status already in the history is a duplicate and changes nothing. `set_fields` are written
        with the change whether or not it moves the status (the worker's sid, price, segments).
        Twilio's 21610 (the contact replied STOP) opts the conversation out before the change is written, so
        a crash in between is completed by Twilio's retry; a repeat (already in the history) does not opt out
        again, since the contact may have texted START since.
        """
        if error_code == UNSUBSCRIBED_CODE and not _in_history(doc, new):
            await self.opt_out(doc["conversation_id"])
        # Twilio's (or the worker's) words are kept, but bounded like every stored field.
        error_message = limits.cut(error_message, limits.ERROR_MESSAGE_BYTES)
        # Shielded like a new message's effects: a change written is announced even when its caller gives up.
        return await asyncio.shield(
            self._write_status(doc, new, at, error_code, error_message, set_fields, from_statuses)
        )

    async def _write_status(
        self,
        doc: MessageDoc,
        new: str,
        at: datetime | None,
        error_code: int,
        error_message: str,
        set_fields: Fields | None,
        from_statuses: frozenset[str] | None,
    ) -> tuple[MessageDoc, bool]:
        for _ in range(_STATUS_RETRIES):
            if from_statuses is not None and doc["status"] not in from_statuses:
                return doc, False
            # A status already in the history is a repeat: it moves nothing and is not recorded again.
            repeat = _in_history(doc, new)
            if repeat and not set_fields:
                # Announced again, once: the write may have been stored by a call that died before its event was
                # appended (a crash), and this repeat is Twilio's retry of it. The event log keeps each change's
                # event at most once (see EventLog.status_changed), so an announced change is not repeated.
                await self.events.status_changed(doc, new)
                return doc, False
            current = doc["status"]
            applied = not repeat and st.moves(current, new)
            fields: Fields = dict(set_fields or {})
            if applied:
                fields["status"] = new
                if new in st.FAILURES or error_code:
                    fields["error_code"] = error_code
                    fields["error_message"] = error_message
            update: Fields = {"$set": fields}
            expect: Fields = {"status": current}
            if not repeat:
                entry: StatusEntry = {"status": new, "time": at or now(), "applied": applied}
                if error_code:
                    entry["error_code"] = error_code
                if error_message:
                    entry["error_message"] = error_message
                update["$push"] = {"status_history": entry}
                expect["status_history.status"] = {"$ne": new}
            updated = await self.store.update_message(doc, expect, update)
            if updated is not None:
                if repeat:  # fields written with a status already recorded (the worker's sid, price)
                    await self.events.message(types_pb2.EVENT_TYPE_MESSAGE_UPDATED, updated)
                else:
                    await self.events.status_changed(updated, new)
                await self._count(updated, new, applied, repeat, error_code)
                return updated, applied
            fresh = await self.store.get_message(str(doc["_id"]))
            if fresh is None:
                raise NotFound(f"message {doc['_id']} vanished", Reason.MESSAGE_NOT_FOUND)
            doc = fresh
        raise Aborted("message changed concurrently too often; retry", Reason.CONCURRENT_UPDATE)

    async def _count(self, doc: MessageDoc, new: str, applied: bool, repeat: bool, error_code: int) -> None:
        """Counts a recorded status for the dashboard: `sent` the first time it is recorded, even late (after
        delivered, it still happened), every other outcome only when it moved the message (a late `failed` after
        `delivered` is no second outcome)."""
        if doc["direction"] != "outbound" or repeat or not (applied or new == st.SENT):
            return
        t = now()
        latency = t - aware(doc["created"]) if new == st.DELIVERED else None
        await self.stats.record(new, t, error_code=error_code, latency=latency)

    async def opt_out(self, cid: str, opted_out: bool = True) -> None:
        """Marks a conversation opted out (STOP or Twilio 21610) or back in."""
        if await self.store.set_opted_out(cid, opted_out):
            await self._conversation_changed(cid)
