"""The send algorithm behind the `send_message(message_id)` job: at most one Twilio message per stored message.

One run of the job:
1. Load the message. Done when it has a Twilio sid or a terminal status.
2. An attempt found in flight (a worker died or a request timed out after the attempt was recorded) is settled
   first: Twilio's list (To and From, newest first, back to the attempt's time) is searched for a message with
   the same body created after the attempt that no other message owns; a match is adopted, otherwise the marker
   is cleared. A list that does not reach back to the attempt within SETTLE_PAGES pages settles nothing.
3. With tries left: record the attempt (status SENDING, attempts + 1, `in_flight` with its time), create the
   message, then store the sid and what Twilio answered through Gateway.change_status.
4. Transient errors retry with backoff via arq's Retry; permanent ones (and the last transient one) fail the
   message with Twilio's code kept (the status change itself opts the conversation out on 21610). A settle that
   cannot read Twilio's list counts as a try too, so a message whose attempt cannot be settled ends FAILED after
   SMS_SEND_MAX_TRIES instead of coming back from the reconciler without end.
5. Once Twilio accepted a create, its sid is recorded before anything else happens to the message: a store error
   is retried within the run while it has time, then by the next run in this process (which keeps the sid), and
   in any other process the in-flight marker makes the run settle by listing before it could send again. A
   duplicate key on the sid is not an outage: another message of ours already owns that Twilio message (its
   settle adopted an identical text), so this message's attempt is settled again like any attempt of unknown
   outcome: it adopts an identical message nobody owns, or is sent as its next try.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timedelta
from typing import NoReturn

from arq import Retry
from pymongo.errors import DuplicateKeyError, PyMongoError
from redis.exceptions import RedisError

from server import log_context, store_metrics
from server import status as st
from server.config import Config
from server.documents import Fields, LastError, MessageDoc
from server.errors import InvalidArgument
from server.gateway import Gateway
from server.store import Store
from server.timeutil import aware, now
from server.webhook_routes import STATUS_PATH
from server.worker import metrics
from server.worker.pacing import SenderPacing
from server.worker.twilio_client import TwilioClient, TwilioFailure, TwilioMessage, bounded

log = logging.getLogger(__name__)

# Twilio's clock and ours may disagree a little; a match may be created this long before our attempt time.
CLOCK_SKEW = timedelta(seconds=120)
# Settling reads at most this many list pages (newest first), so a run stays within the job timeout.
SETTLE_PAGES = 2
SETTLE_PAGE_SIZE = 100
# A run stops retrying a store write this long before arq's job timeout would cancel it.
RUN_MARGIN_SECONDS = 1.0
# Pauses between writes of a sid Twilio gave us while the store fails: doubling from the first to the last.
RECORD_PAUSES = (0.2, 2.0)
# Asks Twilio to retry status callbacks on connect/read timeouts and 5xx: the bridge answers 503 for a sid the
# worker has not stored yet.
CALLBACK_OVERRIDES = "#rc=3&rp=ct,rt,5xx"
# A SCHEDULED message's job that runs this early (clocks) waits in place; earlier than that, it is deferred.
SCHEDULE_EARLY_SECONDS = 2.0


class Deferral(Retry):
    """A run put off to a later time without a failure (the message's time, its sender's turn): a Retry to arq,
    told apart from one after a failure only by the metrics (sms_worker_jobs_total outcome "deferred")."""


class Sending:
    """Runs send jobs against one store, gateway and Twilio client."""

    def __init__(self, cfg: Config, store: Store, gateway: Gateway, twilio: TwilioClient, pacing: SenderPacing) -> None:
        self.cfg = cfg
        self.store = store
        self.gateway = gateway
        self.twilio = twilio
        self.pacing = pacing
        # A run sleeps for its sender's turn at most this long; a later turn is reserved and the job deferred to
        # it, so a long backlog does not hold the worker's job slots (nor outlive the job timeout).
        self.pace_hold_seconds = min(5.0, cfg.job_timeout_seconds / 3)
        self.status_callback = f"{cfg.public_base_url}{STATUS_PATH}{CALLBACK_OVERRIDES}"
        # Twilio messages created (or found) for a message whose sid could not be stored yet, by message id: the
        # next run here records it without asking Twilio. At most one per job that met a store outage.
        self._unrecorded: dict[str, TwilioMessage] = {}

    def retry_delay(self, attempt: int) -> float:
        """The pause after failed attempt number `attempt` (1-based): SMS_RETRY_DELAYS, last one repeated."""
        delays = self.cfg.retry_delays or (0.0,)
        return delays[min(max(attempt, 1), len(delays)) - 1]

    async def run(self, message_id: str) -> str:
        """One run of the job; returns a word for arq's log, raises Retry to run again later."""
        if not self.cfg.metrics_enabled:
            return await self._guarded(message_id)
        outcome = "error"
        try:
            word = await self._guarded(message_id)
            outcome = metrics.job_outcome(word)
            return word
        except Deferral:
            outcome = "deferred"
            raise
        except Retry:
            outcome = "retry"
            raise
        except asyncio.CancelledError:
            outcome = "interrupted"  # arq's job timeout, or the worker stopping
            raise
        finally:
            metrics.JOBS.labels(outcome).inc()

    async def _guarded(self, message_id: str) -> str:
        deadline = time.monotonic() + self.cfg.job_timeout_seconds - RUN_MARGIN_SECONDS
        try:
            with store_metrics.stage("send_job"):
                return await self._run(message_id, deadline)
        except (PyMongoError, RedisError) as exc:
            # A store outage must not fail the job for good (arq only re-runs on Retry); any attempt in flight
            # stays marked, so the next run settles it before sending again.
            log.warning("send %s: store error, retrying: %s", message_id, bounded(str(exc)))
            self._count_retry("store_error")
            raise Retry(defer=self.retry_delay(1)) from exc

    def _count_retry(self, reason: str) -> None:
        if self.cfg.metrics_enabled:
            metrics.SEND_RETRIES.labels(reason).inc()

    def _count_settle(self, result: str) -> None:
        if self.cfg.metrics_enabled:
            metrics.SETTLES.labels(result).inc()

    async def _run(self, message_id: str, deadline: float) -> str:
        doc = await self.store.get_message(message_id)
        if doc is None:
            return "no such message"
        if doc.get("direction") != "outbound":
            return "not outbound"
        known = self._unrecorded.pop(message_id, None)
        if doc.get("twilio_sid"):
            return "already sent"
        if doc["status"] in st.TERMINAL:
            return str(doc["status"])
        if doc["status"] == st.SCHEDULED:
            early = (aware(doc["send_at"]) - now()).total_seconds() if doc.get("send_at") else 0.0
            if early > SCHEDULE_EARLY_SECONDS:
                raise Deferral(defer=early)  # run ahead of its time (e.g. re-enqueued without the delay)
            if early > 0:
                await asyncio.sleep(early)
        if known is not None:
            await self._record(doc, known, deadline)
            return f"recorded {known.sid} ({known.status})"
        if doc.get("in_flight"):
            doc, outcome = await self._settle(doc, deadline)
            if outcome != "absent":
                return outcome
        attempts = int(doc.get("attempts", 0))
        if attempts >= self.cfg.send_max_tries:
            last = doc.get("last_error")
            code, message = (last["code"], last["message"]) if last else (0, "no tries left")
            await self._fail(doc, code, message)
            return f"failed after {attempts} tries"
        await self._pace(doc)
        return await self._attempt(doc, attempts + 1, deadline)

    async def _pace(self, doc: MessageDoc) -> None:
        """Waits for the sender's turn (SMS_SENDER_MPS, one budget per sender across every worker).

        A turn further off than pace_hold_seconds is kept on the message (`paced_until`, and `send_due` for the
        reconciler) and the job is deferred to it, so the next run goes without reserving again. Pacing happens
        before the attempt is recorded: a message waiting for its turn can still be canceled.
        """
        if not self.pacing.enabled:
            return
        paced = doc.get("paced_until")
        if paced is not None:
            wait = (aware(paced) - now()).total_seconds()
        else:
            wait = await self.pacing.reserve(doc["from"], int(doc.get("segments") or 1))
            if self.cfg.metrics_enabled:
                metrics.PACING_WAIT.observe(wait)  # as reserved, once per message (a deferred run reuses it)
            if wait > self.pace_hold_seconds:
                slot = now() + timedelta(seconds=wait)
                # Conditional on the status read: a message canceled meanwhile keeps no `send_due` (which would
                # have the reconciler enqueue it for ever); its attempt below then finds it canceled.
                kept = await self.store.update_message(
                    doc, {"status": doc["status"]}, {"$set": {"paced_until": slot, "send_due": slot}}
                )
                if kept is None:
                    return
        if wait > self.pace_hold_seconds:
            log.info("send %s: the sender's turn is in %.1f s; deferred", doc["_id"], wait)
            raise Deferral(defer=wait)
        if wait > 0:
            await asyncio.sleep(wait)

    async def _attempt(self, doc: MessageDoc, attempt: int, deadline: float) -> str:
        # Persist, then act: the marker says "Twilio may have this message" before the request leaves. It is
        # written before waiting for a Twilio slot, so a slow database never holds a slot idle; the price is a
        # settle (one list request) for a worker killed while waiting.
        # Only from a status an attempt may begin from: a CancelMessage that won the race leaves it CANCELED, and
        # then nothing is written and nothing sent.
        t = now()
        doc, _ = await self.gateway.change_status(
            doc,
            st.SENDING,
            set_fields={
                "attempts": attempt,
                "in_flight": {"at": t, "attempt": attempt},
                "retry_at": None,
                "paced_until": None,
                "send_due": t,
            },
            from_statuses=st.ATTEMPTABLE,
        )
        if doc["status"] != st.SENDING:
            return f"not sent: {doc['status']}"
        media = [m["url"] for m in doc.get("media", []) if m.get("url")]
        try:
            msg = await self.twilio.create(doc["to"], doc.get("body", ""), media, self.status_callback)
        except TwilioFailure as failure:
            if not failure.transient or (attempt >= self.cfg.send_max_tries and not failure.maybe_processed):
                await self._fail(doc, failure.code, failure.message)
                return f"failed on try {attempt}: {failure}"
            # When Twilio may have the message (timeout, 5xx), the marker stays and the next run settles it,
            # which on the last try decides between adopting it and failing.
            await self._retry_later(
                doc, attempt, failure, keep_marker=failure.maybe_processed, reason=metrics.retry_reason(failure)
            )
        await self._record(doc, msg, deadline)
        return f"sent {msg.sid} ({msg.status})"

    async def _record(self, doc: MessageDoc, msg: TwilioMessage, deadline: float) -> MessageDoc:
        """Stores `msg` as this message's Twilio message; never gives up on a sid Twilio gave us for a store error.

        A store error is retried here until the run's deadline, then raised (run() defers the job) with the
        message kept in `_unrecorded` for the next run. Raises Retry when another message owns the sid.
        """
        message_id = str(doc["_id"])
        log_context.add(twilio_sid=msg.sid)  # the rest of the job's lines carry Twilio's sid
        self._unrecorded[message_id] = msg  # kept even if arq cancels this run mid-write
        pause = RECORD_PAUSES[0]
        while True:
            try:
                doc = await self._adopt(doc, msg)
                break
            except DuplicateKeyError as exc:
                owner = await self.store.find_by_sid(msg.sid)
                if owner is not None and owner["_id"] == doc["_id"]:
                    break  # an earlier write of ours got through before its answer was lost
                if owner is not None:
                    del self._unrecorded[message_id]
                    await self._sid_taken(doc, msg, str(owner["_id"]))
                error: Exception = exc  # the owner changed meanwhile: write again
            except (PyMongoError, RedisError) as exc:
                error = exc
            if time.monotonic() + pause > deadline:
                raise error
            log.warning(
                "send %s: Twilio has it as %s but storing that failed; retrying in %.1f s: %s",
                message_id,
                msg.sid,
                pause,
                bounded(str(error)),
            )
            await asyncio.sleep(pause)
            pause = min(pause * 2, RECORD_PAUSES[1])
        self._unrecorded.pop(message_id, None)
        return doc

    async def _sid_taken(self, doc: MessageDoc, msg: TwilioMessage, owner_id: str) -> NoReturn:
        """Another message of ours owns `msg` (its settle adopted an identical text): this message's attempt is
        settled again by the next run, which adopts an identical message nobody owns or sends it as its next try.
        Raises Retry."""
        attempt = int(doc.get("attempts", 0))
        log.warning("send %s: Twilio's %s already belongs to message %s; settling again", doc["_id"], msg.sid, owner_id)
        failure = TwilioFailure(
            0, f"Twilio's {msg.sid} belongs to message {owner_id}", transient=True, maybe_processed=True
        )
        await self._retry_later(doc, attempt, failure, keep_marker=True, reason="sid_taken")

    async def _adopt(self, doc: MessageDoc, msg: TwilioMessage) -> MessageDoc:
        """Stores Twilio's message as this message's: sid, status (when above SENDING), segments, price."""
        fields: Fields = {
            "twilio_sid": msg.sid,
            "twilio_status": msg.status,
            "in_flight": None,
            "retry_at": None,
            "send_due": None,
            "sent_at": now(),
        }
        if not doc.get("segments"):
            # Counted at Send (server/segments.py); Twilio's count only for messages stored before that.
            fields["segments"] = msg.segments
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

    async def _retry_later(
        self, doc: MessageDoc, attempt: int, failure: TwilioFailure, *, keep_marker: bool, reason: str
    ) -> NoReturn:
        """Records try number `attempt` as failed with `failure` and defers the job by the backoff; raises Retry.

        `keep_marker`: Twilio may have the message, so the next run settles the attempt before sending again.
        `reason`: sms_send_retries_total's label (a fixed word, see server/worker/metrics.py).
        """
        delay = self.retry_delay(attempt)
        retry_at = now() + timedelta(seconds=delay)
        error: LastError = {"code": failure.code, "message": failure.message, "at": now()}
        fields: Fields = {"attempts": attempt, "last_error": error, "retry_at": retry_at, "send_due": retry_at}
        if not keep_marker:
            fields["in_flight"] = None
        await self.store.set_send_state(doc, fields)
        log.info("send %s: try %d: %s; retrying in %.2f s", doc["_id"], attempt, failure, delay)
        self._count_retry(reason)
        raise Retry(defer=delay)

    async def _fail(self, doc: MessageDoc, code: int, message: str, attempts: int | None = None) -> None:
        fields: Fields = {"in_flight": None, "retry_at": None, "send_due": None}
        if attempts is not None:
            fields["attempts"] = attempts
        if code or message:
            fields["last_error"] = {"code": code, "message": message, "at": now()}
        await self.gateway.change_status(doc, st.FAILED, error_code=code, error_message=message, set_fields=fields)

    # Settling an attempt whose outcome is unknown

    async def _settle(self, doc: MessageDoc, deadline: float) -> tuple[MessageDoc, str]:
        """Adopts the Twilio message an earlier attempt created, or clears the marker when there is none.

        Returns the message and "absent" (nothing reached Twilio: go on), or a word saying how the run ended. A
        settle that cannot read Twilio is a try of its own: deferred by the backoff, and FAILED (the reason kept)
        on the last try or when Twilio refuses the lookup (e.g. bad credentials: a create would be refused too).
        """
        try:
            match = await self.find_on_twilio(doc)
        except TwilioFailure as failure:
            attempt = int(doc.get("attempts", 0)) + 1
            if not failure.transient or attempt >= self.cfg.send_max_tries:
                await self._fail(doc, failure.code, failure.message, attempts=attempt)
                self._count_settle("failed")
                return doc, f"failed while settling after {attempt} tries: {failure}"
            log.info("send %s: cannot settle the earlier attempt yet: %s", doc["_id"], failure)
            self._count_settle("deferred")
            await self._retry_later(doc, attempt, failure, keep_marker=True, reason="settle")
        if match is not None:
            log.info("send %s: earlier attempt reached Twilio as %s; adopting it", doc["_id"], match.sid)
            recorded = await self._record(doc, match, deadline)
            self._count_settle("adopted")
            return recorded, f"adopted {match.sid}"
        updated = await self.store.set_send_state(doc, {"in_flight": None})
        self._count_settle("absent")
        return (updated or doc), "absent"

    async def find_on_twilio(self, doc: MessageDoc) -> TwilioMessage | None:
        """The Twilio message created by this message's attempt in flight, if any.

        Raises TwilioFailure when Twilio cannot be read, or when SETTLE_PAGES pages of newer messages to the
        same number do not reach back to the attempt: "not found" would then not mean "not sent".
        """
        in_flight = doc.get("in_flight")
        assert in_flight is not None  # only settled when an attempt is in flight
        attempt_at = aware(in_flight["at"])
        cutoff = (attempt_at - CLOCK_SKEW).replace(microsecond=0)
        candidates: list[TwilioMessage] = []
        pages = self.twilio.pages(
            # No DateSent filter: a message Twilio still queues (long codes send 1 segment/s) has no date_sent
            # and could be left out by one, and then sent twice. Newest first, cut off by creation below.
            to=doc["to"],
            from_=self.cfg.twilio_from_number or None,
            page_size=SETTLE_PAGE_SIZE,
        )
        async with contextlib.aclosing(pages):
            read = 0
            async for page in pages:
                read += 1
                for m in page.messages:
                    if _same_text(doc, m, cutoff) and not await self._owned_by_another(doc, m):
                        candidates.append(m)
                if not page.more or any(m.date_created and m.date_created < cutoff for m in page.messages):
                    break
                if read >= SETTLE_PAGES:
                    raise TwilioFailure(
                        0,
                        f"{SETTLE_PAGES} pages of Twilio's list did not reach back to the attempt",
                        transient=True,
                        maybe_processed=True,
                    )
        return min(candidates, key=_created, default=None)

    async def _owned_by_another(self, doc: MessageDoc, m: TwilioMessage) -> bool:
        owner = await self.store.find_by_sid(m.sid)
        return owner is not None and owner["_id"] != doc["_id"]


def _same_text(doc: MessageDoc, m: TwilioMessage, cutoff: datetime) -> bool:
    """Whether `m` may be this message as an attempt created it: outbound, same text and media count, not older."""
    return (
        m.direction.startswith("outbound")
        and m.body == doc.get("body", "")
        and m.num_media == len(doc.get("media", []))
        and m.date_created is not None
        and m.date_created >= cutoff
    )


def _created(m: TwilioMessage) -> datetime:
    assert m.date_created is not None
    return m.date_created


def _known(status: str) -> str:
    """Twilio's status if our ranks know it, else SENDING (Twilio has it; callbacks will tell the rest)."""
    try:
        return st.parse_status(status)
    except InvalidArgument:
        return st.SENDING
