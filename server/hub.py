"""Subscribe's fan-out: one reader of the event log per process, bounded queues per subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterable

from google.protobuf.timestamp_pb2 import Timestamp
from redis.asyncio import Redis
from sms.v1 import sms_pb2, types_pb2

from server import limits
from server.auth import Caller
from server.config import Config
from server.errors import InvalidArgument, Unavailable
from server.events import (
    F_CONVERSATION,
    F_DATA,
    F_GAP,
    F_OWNER,
    F_PREVIOUS_OWNER,
    ZERO_ID,
    EventId,
    entry_id,
    format_event_id,
    log_state,
    parse_event_id,
    read_page,
)
from server.metrics import EVENT_DELIVERY_SECONDS, EVENTS_DELIVERED, RESYNCS, SUBSCRIBERS_OPEN
from server.reasons import Reason
from server.visibility import visible_owners

log = logging.getLogger(__name__)

Response = sms_pb2.SubscribeResponse
Entry = tuple[bytes, dict[bytes, bytes]]

READ_COUNT = 1_000  # entries per XREAD; one batch is dispatched without yielding to the loop
READ_BLOCK_MS = 2_000
REPLAY_PAGE = 500
READY_TIMEOUT = 5.0
# A replaying subscriber whose live queue overflowed catches up from the log this many times before
# it is told to resync, so a long replay under live traffic does not end in a needless resync.
CATCH_UP_ROUNDS = 3
RETRY_MIN, RETRY_MAX = 0.2, 5.0
COUNT_LOG_SECONDS = 1.0

SHUTTING_DOWN = "server shutting down"
SLOW_CONSUMER = "slow consumer"
LOG_UNAVAILABLE = "event log was unavailable"
EVENTS_LOST = "a writer could not append some events"
TOKEN_TRIMMED = "resume token is older than the retained event log"
TOKEN_FUTURE = "resume token is ahead of the event log"
# sms_resyncs_total's `reason` label: one short value per reason above, so the series are a fixed few.
RESYNC_LABELS = {
    SLOW_CONSUMER: "slow_consumer",
    LOG_UNAVAILABLE: "log_unavailable",
    EVENTS_LOST: "events_lost",
    TOKEN_TRIMMED: "token_trimmed",
    TOKEN_FUTURE: "token_future",
}


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def _event(raw_id: bytes, fields: dict[bytes, bytes]) -> Response:
    """The response carrying a stream entry; parsed once, whoever receives it."""
    event = types_pb2.Event.FromString(fields.get(F_DATA, b""))
    event.id = raw_id.decode()
    return Response(event=event)


def _resync(reason: str, last: EventId) -> Response:
    return Response(resync_required=sms_pb2.ResyncRequired(reason=reason, last_event_id=format_event_id(last)))


def _observe_delivery(response: Response) -> None:
    """Counts a live event handed to its subscriber's stream, with its age: from the time the writer stored it
    (the event's `time`, on the writer's clock) to now. This point, the stream's generator handing the event to
    grpc, is the first at which it leaves the server's queues; offering it to the subscriber's queue is not (the
    queue may still drop it for a resync). Clamped at 0 against writers whose clock runs ahead of ours."""
    EVENTS_DELIVERED.inc()
    stored = response.event.time
    if stored.seconds or stored.nanos:
        EVENT_DELIVERY_SECONDS.observe(max(0.0, time.time() - (stored.seconds + stored.nanos / 1e9)))


def _heartbeat(last: EventId) -> Response:
    return Response(heartbeat=sms_pb2.Heartbeat(last_event_id=format_event_id(last), time=_now()))


class Subscriber:
    """One open Subscribe call: what it may see, and its queue of live events, bounded in count and in bytes."""

    __slots__ = ("closed", "conversation", "items", "limit", "limit_bytes", "owners", "queued_bytes", "resync", "wake")

    def __init__(self, owners: tuple[str, ...] | None, conversation: str, limit: int, limit_bytes: int) -> None:
        # The owners whose events are this subscriber's (server/visibility.py); None: every owner's. A conversation
        # narrows further; events carry the owner they had when they happened.
        self.owners = owners
        self.conversation = conversation
        self.limit = limit
        self.limit_bytes = limit_bytes
        # Each queued event with its size (serialized); queued_bytes is their sum. Changed only by the methods below.
        self.items: deque[tuple[EventId, Response, int]] = deque()
        self.queued_bytes = 0
        self.wake = asyncio.Event()
        # A pending resync: the latest id dropped for it, and why. Set instead of growing the queue.
        self.resync: tuple[EventId, str] | None = None
        self.closed = False

    def wants(self, owner: str, conversation: str, previous: str | None = None) -> bool:
        """Whether an event of `owner`'s `conversation` is this subscriber's.

        Events are routed by the owner they carried when they happened, live and on a replay alike: a
        conversation's later events reach whoever it was assigned to by then. A change of assignee's event also
        carries the owner before (`previous`) and reaches the subscribers of either, so the old assignee's
        inbox sees it go and nothing after. An unassigned conversation's events (owner UNASSIGNED) reach agents
        only when visible_owners lists UNASSIGNED for them (SMS_UNASSIGNED_VISIBLE_TO_AGENTS); gap markers are
        resyncs for everyone before routing.
        """
        if self.conversation and conversation != self.conversation:
            return False
        if self.owners is None:
            return True
        return owner in self.owners or (previous is not None and previous in self.owners)

    def offer(self, key: EventId, response: Response, size: int) -> None:
        """Queues a live event of `size` bytes; past either bound drops the queue and owes one resync instead."""
        if self.resync is not None:
            self.resync = (key, self.resync[1])
            return
        if len(self.items) >= self.limit or self.queued_bytes + size > self.limit_bytes:
            self.clear()
            self.resync = (key, SLOW_CONSUMER)
        else:
            self.items.append((key, response, size))
            self.queued_bytes += size
        self.wake.set()

    def take(self) -> tuple[EventId, Response]:
        """Removes and returns the oldest queued event (there must be one)."""
        key, response, size = self.items.popleft()
        self.queued_bytes -= size
        return key, response

    def drop_through(self, upto: EventId) -> None:
        """Drops the queued events at or before `upto`."""
        while self.items and self.items[0][0] <= upto:
            self.take()

    def clear(self) -> None:
        self.items.clear()
        self.queued_bytes = 0

    def owe_resync(self, last: EventId, reason: str) -> None:
        self.clear()
        self.resync = (last, reason)
        self.wake.set()


class Hub:
    """Reads the event stream once (one XREAD loop) and fans entries out to this process's subscribers."""

    def __init__(self, cfg: Config, redis: Redis) -> None:
        self.cfg = cfg
        self.redis = redis
        self.stream = cfg.event_stream
        # The id of the last entry dispatched: every later entry reaches every registered subscriber.
        self.position: EventId = ZERO_ID
        self._ready = asyncio.Event()
        self._closing = False
        self._by_owner: dict[str, set[Subscriber]] = {}
        self._by_conversation: dict[str, set[Subscriber]] = {}
        self._everything: set[Subscriber] = set()
        self._count = 0
        self._empty = asyncio.Event()
        self._empty.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._metrics = cfg.metrics_enabled

    @property
    def subscriber_count(self) -> int:
        return self._count

    async def start(self) -> None:
        """Starts the stream reader and the subscriber-count log line."""
        self._tasks = [
            asyncio.create_task(self._read_loop(), name="hub-reader"),
            asyncio.create_task(self._count_loop(), name="hub-count"),
        ]

    async def close(self) -> None:
        """Ends every open stream with UNAVAILABLE (clients reconnect elsewhere) and stops reading."""
        self._closing = True
        for sub in self._all():
            sub.closed = True
            sub.wake.set()
        # Give the handlers a moment to send their status before the server's drain begins.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), 2.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        log.info("hub: closed, %d subscribers", self._count)

    # Registration

    def _all(self) -> Iterable[Subscriber]:
        seen: set[Subscriber] = set(self._everything)
        for group in (*self._by_owner.values(), *self._by_conversation.values()):
            seen |= group
        return seen

    def _index(self, sub: Subscriber) -> tuple[dict[str, set[Subscriber]] | None, tuple[str, ...]]:
        if sub.conversation:
            return self._by_conversation, (sub.conversation,)
        if sub.owners is None:
            return None, ()
        return self._by_owner, sub.owners

    def _add(self, sub: Subscriber) -> None:
        index, keys = self._index(sub)
        if index is None:
            self._everything.add(sub)
        else:
            for key in keys:
                index.setdefault(key, set()).add(sub)
        self._count += 1
        self._empty.clear()
        if self._metrics:
            SUBSCRIBERS_OPEN.inc()

    def _remove(self, sub: Subscriber) -> None:
        index, keys = self._index(sub)
        if index is None:
            self._everything.discard(sub)
        else:
            for key in keys:
                group = index.get(key)
                if group is not None:
                    group.discard(sub)
                    if not group:
                        del index[key]
        self._count -= 1
        if not self._count:
            self._empty.set()
        if self._metrics:
            SUBSCRIBERS_OPEN.dec()

    # The one reader

    async def _read_loop(self) -> None:
        delay = RETRY_MIN
        failed = False
        while True:
            try:
                if failed or not self._ready.is_set():
                    state = await log_state(self.redis, self.stream)
                    if failed:
                        # Appends may have failed while Redis was away: tell everyone rather than guess.
                        log.warning(
                            "hub: event log reachable again at %s; subscribers must resync", format_event_id(state.last)
                        )
                        for sub in self._all():
                            sub.owe_resync(state.last, LOG_UNAVAILABLE)
                    self.position = state.last
                    failed = False
                    self._ready.set()
                async with asyncio.timeout(READ_BLOCK_MS / 1000 + 10):
                    reply = await self.redis.xread(
                        {self.stream: format_event_id(self.position)}, count=READ_COUNT, block=READ_BLOCK_MS
                    )
                delay = RETRY_MIN
                for _, entries in reply or ():
                    self._dispatch(entries)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not failed:
                    log.warning("hub: reading the event log failed (%s); retrying", exc)
                failed = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    def _dispatch(self, entries: list[Entry]) -> None:
        """Routes a batch to the entitled subscribers; O(subscribers entitled) per entry."""
        for raw_id, fields in entries:
            key = entry_id(raw_id)
            self.position = key
            if F_GAP in fields:
                for sub in self._all():
                    sub.owe_resync(key, EVENTS_LOST)
                continue
            owner = fields.get(F_OWNER, b"").decode()
            conversation = fields.get(F_CONVERSATION, b"").decode()
            raw_previous = fields.get(F_PREVIOUS_OWNER)
            previous = None if raw_previous is None else raw_previous.decode()
            groups = (
                self._by_owner.get(owner),
                None if previous is None or previous == owner else self._by_owner.get(previous),
                self._everything,
                self._by_conversation.get(conversation),
            )
            # A subscriber listed under several owners (an agent: their own and the unassigned) gets an event once.
            targets = {sub for group in groups if group for sub in group if sub.wants(owner, conversation, previous)}
            if not targets:
                continue
            try:
                response = _event(raw_id, fields)
            except Exception:
                log.exception("hub: undecodable event %s skipped", raw_id.decode())
                continue
            # What a subscriber's byte bound counts: the event as stored, measured once for all of them.
            size = len(fields.get(F_DATA, b""))
            for sub in targets:
                sub.offer(key, response, size)

    async def _count_loop(self) -> None:
        """Logs the subscriber count when it changes: the operator's (and tests') view of open streams."""
        logged = -1
        while True:
            if self._count != logged:
                logged = self._count
                log.info("hub: %d subscribers", logged)
            await asyncio.sleep(COUNT_LOG_SECONDS)

    # One subscriber

    def subscriber_for(self, caller: Caller, request: sms_pb2.SubscribeRequest) -> Subscriber:
        """What the caller may see (server/visibility.py), whatever all_owners says: agents their own conversations
        and, by setting, the unassigned ones; admins and services every owner's with all_owners or a
        conversation, else their own."""
        narrowed = bool(request.conversation_id)
        owners: tuple[str, ...] | None
        if caller.sees_all:
            owners = None if request.all_owners or narrowed else (caller.user_id,)
        else:
            owners = visible_owners(self.cfg, caller)
        return Subscriber(
            owners, request.conversation_id, self.cfg.subscriber_queue_size, self.cfg.subscriber_queue_bytes
        )

    async def subscribe(self, caller: Caller, request: sms_pb2.SubscribeRequest) -> AsyncGenerator[Response, None]:
        """Replays after the resume token, then streams live events, resyncs and heartbeats."""
        token: EventId | None = None
        if limits.text("resume_token", request.resume_token, limits.RESUME_TOKEN_BYTES):
            token = parse_event_id(request.resume_token)
            if token is None:
                raise InvalidArgument(
                    "resume_token", "not an event id (expected <ms>-<seq>)", Reason.INVALID_RESUME_TOKEN
                )
        if self._closing:
            raise Unavailable(SHUTTING_DOWN, Reason.SHUTTING_DOWN)
        try:
            await asyncio.wait_for(self._ready.wait(), READY_TIMEOUT)
        except TimeoutError:
            raise Unavailable("event log unavailable", Reason.EVENT_LOG_UNAVAILABLE) from None
        sub = self.subscriber_for(caller, request)
        # Registered before replaying, so whatever the replay misses at its end arrives live.
        self._add(sub)
        try:
            delivered = self.position
            if token is not None:
                delivered = token
                async with contextlib.aclosing(self._replay(sub, token)) as replay:
                    async for response, at in replay:
                        delivered = at
                        yield response
            yield _heartbeat(self._mark(sub, delivered))
            async for response in self._live(sub, delivered):
                yield response
        finally:
            self._remove(sub)

    async def _replay(self, sub: Subscriber, token: EventId) -> AsyncGenerator[tuple[Response, EventId], None]:
        """Entitled entries after `token`, in order; a resync instead when they are no longer all there."""
        cursor = token
        rounds = 0
        while True:
            while True:
                if sub.closed:
                    raise Unavailable(SHUTTING_DOWN, Reason.SHUTTING_DOWN)
                try:
                    state, entries = await read_page(self.redis, self.stream, cursor, REPLAY_PAGE)
                except Exception as exc:
                    log.warning("hub: replay failed (%s)", exc)
                    raise Unavailable("event log unavailable", Reason.EVENT_LOG_UNAVAILABLE) from None
                if cursor > state.last:
                    self._settle(sub, state.last)
                    yield self._resync(TOKEN_FUTURE, state.last), state.last
                    return
                if state.missed_after(cursor):
                    self._settle(sub, state.last)
                    yield self._resync(TOKEN_TRIMMED, state.last), state.last
                    return
                for raw_id, fields in entries:
                    cursor = entry_id(raw_id)
                    if F_GAP in fields:
                        yield self._resync(EVENTS_LOST, cursor), cursor
                    elif sub.wants(
                        fields.get(F_OWNER, b"").decode(),
                        fields.get(F_CONVERSATION, b"").decode(),
                        None if F_PREVIOUS_OWNER not in fields else fields[F_PREVIOUS_OWNER].decode(),
                    ):
                        if self._metrics:
                            EVENTS_DELIVERED.inc()
                        yield _event(raw_id, fields), cursor
                if len(entries) < REPLAY_PAGE:
                    break
            pending = sub.resync
            if pending is None or pending[0] <= cursor:
                # Whatever the live queue dropped was replayed.
                self._settle(sub, cursor)
                return
            if pending[1] != SLOW_CONSUMER or rounds >= CATCH_UP_ROUNDS:
                return  # the live loop sends the owed resync
            # The live queue overflowed during the replay, but the dropped entries are still in the log.
            rounds += 1
            sub.clear()
            sub.resync = None

    def _resync(self, reason: str, last: EventId) -> Response:
        """A resync for a subscriber's stream, counted by reason."""
        if self._metrics:
            RESYNCS.labels(RESYNC_LABELS.get(reason, "other")).inc()
        return _resync(reason, last)

    def _mark(self, sub: Subscriber, delivered: EventId) -> EventId:
        """The resume point a heartbeat may carry: the reader's position only once nothing is queued or owed."""
        if sub.items or sub.resync is not None:
            return delivered
        return max(self.position, delivered)

    @staticmethod
    def _settle(sub: Subscriber, upto: EventId) -> None:
        """After a replay (or resync) up to `upto`: nothing owed or queued at or before it is sent again."""
        if sub.resync is not None and sub.resync[0] <= upto:
            sub.resync = None
        sub.drop_through(upto)

    async def _live(self, sub: Subscriber, delivered: EventId) -> AsyncIterator[Response]:
        """Queued live events, an owed resync, or a heartbeat when nothing was sent for a while."""
        interval = self.cfg.heartbeat_seconds
        last_sent = time.monotonic()
        while True:
            if sub.closed:
                raise Unavailable(SHUTTING_DOWN, Reason.SHUTTING_DOWN)
            if sub.resync is not None:
                delivered, reason = sub.resync
                sub.resync = None
                yield self._resync(reason, delivered)
                last_sent = time.monotonic()
                continue
            if sub.items:
                key, response = sub.take()
                if key <= delivered:
                    continue
                delivered = key
                if self._metrics:
                    _observe_delivery(response)
                yield response
                last_sent = time.monotonic()
                continue
            sub.wake.clear()
            if interval <= 0:
                await sub.wake.wait()
                continue
            remaining = last_sent + interval - time.monotonic()
            if remaining > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await sub.wake.wait()
                continue
            yield _heartbeat(self._mark(sub, delivered))
            last_sent = time.monotonic()
