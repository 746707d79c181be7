"""The send algorithm behind the `send_message(message_id)` job: at most one Twilio message per stored message.

One run of the job:
1. Load the message. Done when it has a Twilio sid or a terminal status.
2. An attempt found in flight (a worker died or a request timed out after the attempt was recorded) is settled
   first: Twilio's list (To, From, DateSent ≥ the attempt's day) is searched for a message with the same body
   created after the attempt that no other message owns; a match is adopted, otherwise the marker is cleared.
3. With tries left: record the attempt (status SENDING, attempts + 1, `in_flight` with its time), create the
   message, then store the sid and what Twilio answered through Gateway.change_status.
4. Transient errors retry with backoff via arq's Retry; permanent ones (and the last transient one) fail the
   message with Twilio's code kept (the status change itself opts the conversation out on 21610).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from arq import Retry
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from server import status as st
from server.config import Config
from server.documents import Fields, LastError, MessageDoc
from server.errors import InvalidArgument
from server.gateway import Gateway
from server.store import Store
from server.timeutil import aware, now
from server.webhook_routes import STATUS_PATH
from server.worker.twilio_client import TwilioClient, TwilioFailure, TwilioMessage

log = logging.getLogger(__name__)

# Twilio's clock and ours may disagree a little; a match may be created this long before our attempt time.
CLOCK_SKEW = timedelta(seconds=120)
# Settling reads at most this many list pages (newest first), so a run stays within the job timeout.
SETTLE_PAGES = 2
SETTLE_PAGE_SIZE = 100
# Asks Twilio to retry status callbacks on connect/read timeouts and 5xx: the bridge answers 503 for a sid the
# worker has not stored yet.
CALLBACK_OVERRIDES = "#rc=3&rp=ct,rt,5xx"


class Sending:
    """Runs send jobs against one store, gateway and Twilio client."""

    def __init__(self, cfg: Config, store: Store, gateway: Gateway, twilio: TwilioClient) -> None:
        self.cfg = cfg
        self.store = store
        self.gateway = gateway
        self.twilio = twilio
        self.status_callback = f"{cfg.public_base_url}{STATUS_PATH}{CALLBACK_OVERRIDES}"

    def retry_delay(self, attempt: int) -> float:
        """The pause after failed attempt number `attempt` (1-based): SMS_RETRY_DELAYS, last one repeated."""
        delays = self.cfg.retry_delays or (0.0,)
        return delays[min(max(attempt, 1), len(delays)) - 1]

    async def run(self, message_id: str) -> str:
        """One run of the job; returns a word for arq's log, raises Retry to run again later."""
        try:
            return await self._run(message_id)
        except (PyMongoError, RedisError) as exc:
            # A store outage must not fail the job for good (arq only re-runs on Retry); any attempt in flight
            # stays marked, so the next run settles it before sending again.
            log.warning("send %s: store error, retrying: %s", message_id, exc)
            raise Retry(defer=self.retry_delay(1)) from exc

    async def _run(self, message_id: str) -> str:
        doc = await self.store.get_message(message_id)
        if doc is None:
            return "no such message"
        if doc.get("direction") != "outbound":
            return "not outbound"
        if doc.get("twilio_sid"):
            return "already sent"
        if doc["status"] in st.TERMINAL:
            return str(doc["status"])
        if doc.get("in_flight"):
            doc, outcome = await self._settle(doc)
            if outcome != "absent":
                return outcome
        attempts = int(doc.get("attempts", 0))
        if attempts >= self.cfg.send_max_tries:
            last = doc.get("last_error")
            code, message = (last["code"], last["message"]) if last else (0, "no tries left")
            await self._fail(doc, code, message)
            return f"failed after {attempts} tries"
        return await self._attempt(doc, attempts + 1)

    async def _attempt(self, doc: MessageDoc, attempt: int) -> str:
        # Persist, then act: the marker says "Twilio may have this message" before the request leaves. It is
        # written before waiting for a Twilio slot, so a slow database never holds a slot idle; the price is a
        # settle (one list request) for a worker killed while waiting.
        t = now()
        doc, _ = await self.gateway.change_status(
            doc,
            st.SENDING,
            set_fields={
                "attempts": attempt,
                "in_flight": {"at": t, "attempt": attempt},
                "retry_at": None,
                "send_due": t,
            },
        )
        media = [m["url"] for m in doc.get("media", []) if m.get("url")]
        try:
            msg = await self.twilio.create(doc["to"], doc.get("body", ""), media, self.status_callback)
        except TwilioFailure as failure:
            return await self._failed_attempt(doc, attempt, failure)
        await self._adopt(doc, msg)
        return f"sent {msg.sid} ({msg.status})"

    async def _adopt(self, doc: MessageDoc, msg: TwilioMessage) -> MessageDoc:
        """Stores Twilio's message as this message's: sid, status (when above SENDING), segments, price."""
        fields: Fields = {
            "twilio_sid": msg.sid,
            "twilio_status": msg.status,
            "segments": msg.segments,
            "in_flight": None,
            "retry_at": None,
            "send_due": None,
            "sent_at": now(),
        }
        if msg.price is not None:
            fields["price"] = msg.price
        if msg.price_unit:
            fields["price_unit"] = msg.price_unit
        if msg.from_ and not self.cfg.twilio_from_number:
            fields["twilio_from"] = msg.from_  # the sender a Messaging Service picked
        # Twilio answers a create with queued/accepted, below our SENDING: the status stays until callbacks.
        twilio_status = _known(msg.status)
        new = twilio_status if st.moves(st.SENDING, twilio_status) else st.SENDING
        doc, _ = await self.gateway.change_status(
            doc, new, error_code=msg.error_code, error_message=msg.error_message, set_fields=fields
        )
        return doc

    async def _failed_attempt(self, doc: MessageDoc, attempt: int, failure: TwilioFailure) -> str:
        error: LastError = {"code": failure.code, "message": failure.message, "at": now()}
        if not failure.transient:
            await self._fail(doc, failure.code, failure.message)
            return f"failed: {failure}"
        if attempt >= self.cfg.send_max_tries and not failure.maybe_processed:
            await self._fail(doc, failure.code, failure.message)
            return f"failed after {attempt} tries: {failure}"
        delay = self.retry_delay(attempt)
        retry_at = now() + timedelta(seconds=delay)
        fields: Fields = {"last_error": error, "retry_at": retry_at, "send_due": retry_at}
        if not failure.maybe_processed:
            fields["in_flight"] = None
        # When Twilio may have the message (timeout, 5xx), the marker stays and the next run settles it,
        # which on the last try decides between adopting it and failing.
        await self.store.set_send_state(doc, fields)
        log.info("send %s: attempt %d: %s; retrying in %.2f s", doc["_id"], attempt, failure, delay)
        raise Retry(defer=delay)

    async def _fail(self, doc: MessageDoc, code: int, message: str) -> None:
        fields: Fields = {"in_flight": None, "retry_at": None, "send_due": None}
        if code or message:
            fields["last_error"] = {"code": code, "message": message, "at": now()}
        await self.gateway.change_status(doc, st.FAILED, error_code=code, error_message=message, set_fields=fields)

    # Settling an attempt whose outcome is unknown

    async def _settle(self, doc: MessageDoc) -> tuple[MessageDoc, str]:
        """Adopts the Twilio message an earlier attempt created, or clears the marker when there is none.

        Returns the message and "absent" (nothing reached Twilio: go on), or a word saying how the run ended.
        """
        try:
            match = await self.find_on_twilio(doc)
        except TwilioFailure as failure:
            if failure.transient:
                log.info("send %s: cannot settle the earlier attempt yet: %s", doc["_id"], failure)
                raise Retry(defer=self.retry_delay(1)) from failure
            # Twilio refuses the lookup (e.g. bad credentials); a create would be refused the same way.
            await self._fail(doc, failure.code, failure.message)
            return doc, f"failed while settling: {failure}"
        if match is not None:
            log.info("send %s: earlier attempt reached Twilio as %s; adopting it", doc["_id"], match.sid)
            return await self._adopt(doc, match), f"adopted {match.sid}"
        updated = await self.store.set_send_state(doc, {"in_flight": None})
        return (updated or doc), "absent"

    async def find_on_twilio(self, doc: MessageDoc) -> TwilioMessage | None:
        """The Twilio message created by this message's attempt in flight, if any."""
        in_flight = doc.get("in_flight")
        assert in_flight is not None  # only settled when an attempt is in flight
        attempt_at = aware(in_flight["at"])
        cutoff = (attempt_at - CLOCK_SKEW).replace(microsecond=0)
        media_count = len(doc.get("media", []))
        candidates: list[TwilioMessage] = []
        async for m in self.twilio.messages(
            # No DateSent filter: a message Twilio still queues (long codes send 1 segment/s) has no date_sent
            # and could be left out by one, and then sent twice. Newest first, cut off by creation below.
            to=doc["to"],
            from_=self.cfg.twilio_from_number or None,
            page_size=SETTLE_PAGE_SIZE,
            max_pages=SETTLE_PAGES,
        ):
            if not m.direction.startswith("outbound") or m.body != doc.get("body", ""):
                continue
            if m.num_media != media_count or m.date_created is None or m.date_created < cutoff:
                continue
            owner = await self.store.find_by_sid(m.sid)
            if owner is not None and owner["_id"] != doc["_id"]:
                continue  # another message of ours with the same text
            candidates.append(m)
        if not candidates:
            return None
        return min(candidates, key=lambda m: _created(m))


def _created(m: TwilioMessage) -> datetime:
    assert m.date_created is not None
    return m.date_created


def _known(status: str) -> str:
    """Twilio's status if our ranks know it, else SENDING (Twilio has it; callbacks will tell the rest)."""
    try:
        return st.parse_status(status)
    except InvalidArgument:
        return st.SENDING
