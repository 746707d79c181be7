"""The event log: every state change, after it is stored, appended to one bounded Redis stream."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from redis.asyncio import Redis
from sms.v1 import types_pb2

from server import limits
from server.convert import conversation_to_proto, message_to_proto
from server.documents import ConversationDoc, MessageDoc
from server.timeutil import now, to_timestamp

log = logging.getLogger(__name__)

# How long the log remembers that a message's status change was announced (EventLog.status_changed): longer than
# Twilio retries a callback (minutes) and than a caller's retry, short enough to keep the keys few (one per change).
ANNOUNCED_TTL_SECONDS = 3600
# XADD only when the change's marker is new: the marker and the entry are written together or not at all.
_APPEND_ONCE = """
if not redis.call('set', KEYS[2], '1', 'NX', 'EX', ARGV[2]) then return false end
return redis.call('xadd', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, 3))
"""

# Stream entry fields. `owner` and `conversation_id` let a reader route an event without parsing it.
F_OWNER, F_CONVERSATION, F_DATA = b"owner", b"conversation_id", b"data"
# A gap marker: this writer failed to append that many events; every reader must resync past it.
F_GAP = b"gap"
# On a change of assignee's conversation-updated event only: the owner before (possibly UNASSIGNED, ""). Whoever
# was entitled by either owner gets that one event (the old assignee's inbox drops it), and nothing after.
F_PREVIOUS_OWNER = b"previous_owner"


class EventLog:
    """Appends events to the stream `name`, keeping about `retention` of them, each at most limits.EVENT_BYTES.

    The log's bytes are bounded by the two: the input bounds keep every event under EVENT_BYTES (see limits.py).
    """

    def __init__(self, redis: Redis, name: str, retention: int) -> None:
        self.redis = redis
        self.name = name
        self.retention = retention
        self.lost = 0
        self._append_once = redis.register_script(_APPEND_ONCE)

    async def append(
        self, event: types_pb2.Event, owner: str, conversation_id: str, previous_owner: str | None = None
    ) -> str | None:
        """Appends `event` (its id is assigned by Redis); returns the id, or None when Redis failed.

        A failed append must not fail the write that already happened. Instead the next append that
        succeeds is preceded by a gap marker, so readers on every replica resync rather than miss it.
        An event over limits.EVENT_BYTES, which the input bounds rule out, is not appended: its gap marker is
        written at once, so the log keeps its byte bound and readers re-read the state from MongoDB.
        """
        return (await self.append_all([Entry(event, owner, conversation_id, previous_owner)]))[0]

    async def append_all(self, entries: Sequence[Entry]) -> list[str | None]:
        """Appends `entries` in order in one round trip (see `append`); their ids, None for each not appended."""
        fields_of: list[dict[bytes, bytes | str] | None] = []
        oversized = 0
        for entry in entries:
            data = entry.event.SerializeToString()
            if len(data) > limits.EVENT_BYTES:
                log.error("event of %d bytes over the bound of %d not appended", len(data), limits.EVENT_BYTES)
                oversized += 1
                fields_of.append(None)
                continue
            fields: dict[bytes, bytes | str] = {
                F_OWNER: entry.owner,
                F_CONVERSATION: entry.conversation_id,
                F_DATA: data,
            }
            if entry.previous_owner is not None:
                fields[F_PREVIOUS_OWNER] = entry.previous_owner
            fields_of.append(fields)
        lost = self.lost + oversized
        once = [entry.once for entry in entries]
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                if lost:
                    gap: dict[bytes, bytes | str] = {F_OWNER: "", F_CONVERSATION: "", F_GAP: str(lost)}
                    pipe.xadd(self.name, gap, maxlen=self.retention, approximate=True)  # type: ignore[arg-type]
                for appended, key in zip(fields_of, once, strict=True):
                    if appended is None:
                        continue
                    if key is None:
                        pipe.xadd(self.name, appended, maxlen=self.retention, approximate=True)  # type: ignore[arg-type]
                    else:
                        flat = [part for pair in appended.items() for part in pair]
                        keys = [self.name, f"{self.name}:announced:{key}"]
                        await self._append_once(keys, [self.retention, ANNOUNCED_TTL_SECONDS, *flat], client=pipe)
                results = await pipe.execute()
        except Exception:
            self.lost += len(entries) - oversized
            kinds = ", ".join(types_pb2.EventType.Name(e.event.type) for e in entries)
            log.exception("event append failed (%s)", kinds)
            return [None] * len(entries)
        if lost:
            log.warning("event log: marked a gap of %d lost events", lost)
            self.lost = 0
            results = results[1:]
        ids = iter(results)
        # An entry the script skipped (its change was announced before) answers None, like one not appended.
        return [None if f is None else _id_text(next(ids)) for f in fields_of]

    async def message(self, kind: types_pb2.EventType.ValueType, doc: MessageDoc) -> str | None:
        """Appends a message event carrying the message as it now is."""
        return (await self.append_all([message_entry(kind, doc)]))[0]

    async def status_changed(self, doc: MessageDoc, status: str) -> str | None:
        """Announces that `doc`'s message recorded `status`, at most once per message and status (for an hour):
        a repeat of a change whose first announcement a crash lost is announced, one already announced is not."""
        entry = message_entry(types_pb2.EVENT_TYPE_MESSAGE_UPDATED, doc)
        return (await self.append_all([replace(entry, once=f"{doc['_id']}:{status}")]))[0]

    async def message_and_conversation(
        self, kind: types_pb2.EventType.ValueType, doc: MessageDoc, conversation: ConversationDoc | None
    ) -> None:
        """A message's event, then its conversation's (when given), in one round trip."""
        entries = [message_entry(kind, doc)]
        if conversation is not None:
            entries.append(conversation_entry(conversation))
        await self.append_all(entries)

    async def conversation(self, doc: ConversationDoc, previous_owner: str | None = None) -> str | None:
        """Appends a conversation-updated event carrying the conversation as it now is.

        `previous_owner`: the event of a change of assignee, entitling the owner before as well as the new one.
        """
        return (await self.append_all([conversation_entry(doc, previous_owner)]))[0]


@dataclass(frozen=True)
class Entry:
    """One event to append, with the routing fields of its stream entry."""

    event: types_pb2.Event
    owner: str
    conversation_id: str
    previous_owner: str | None = None
    # A key naming the change this event announces: with one, the entry is appended only if no entry with the
    # same key was within ANNOUNCED_TTL_SECONDS.
    once: str | None = None


def message_entry(kind: types_pb2.EventType.ValueType, doc: MessageDoc) -> Entry:
    """The entry of a message event carrying the message as it now is."""
    event = types_pb2.Event(type=kind, time=to_timestamp(now()), message=message_to_proto(doc))
    return Entry(event, doc.get("owner", ""), doc["conversation_id"])


def conversation_entry(doc: ConversationDoc, previous_owner: str | None = None) -> Entry:
    """The entry of a conversation-updated event carrying the conversation as it now is."""
    event = types_pb2.Event(
        type=types_pb2.EVENT_TYPE_CONVERSATION_UPDATED,
        time=to_timestamp(now()),
        conversation=conversation_to_proto(doc),
    )
    return Entry(event, doc.get("owner", ""), doc["_id"], previous_owner)


# Reading the log (Subscribe). Entry ids are "<ms>-<seq>"; as tuples they compare in log order.

EventId = tuple[int, int]
ZERO_ID: EventId = (0, 0)
# Redis's largest id: nothing can follow it. Each part is an unsigned 64-bit integer, at most 20 digits.
MAX_ID: EventId = (2**64 - 1, 2**64 - 1)
_ID_DIGITS = len(str(2**64 - 1))


def parse_event_id(text: str) -> EventId | None:
    """The id `text` names as a comparable tuple; None when it is not a complete stream id."""
    ms, sep, seq = text.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit() or not ms.isascii() or not seq.isascii():
        return None
    if len(ms) > _ID_DIGITS or len(seq) > _ID_DIGITS:
        return None  # beyond Redis's range, and int() refuses thousands of digits (ValueError)
    value = (int(ms), int(seq))
    # Redis ids are two unsigned 64-bit integers; anything larger cannot be an id it issued.
    return value if value[0] < 2**64 and value[1] < 2**64 else None


def format_event_id(value: EventId) -> str:
    return f"{value[0]}-{value[1]}"


def successor(value: EventId) -> EventId:
    """The smallest id greater than `value`."""
    return (value[0], value[1] + 1) if value[1] < 2**64 - 1 else (value[0] + 1, 0)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _id_text(raw: bytes | str | None) -> str | None:
    return None if raw is None else _text(raw)


def entry_id(raw: bytes | str) -> EventId:
    """The tuple form of an id Redis returned (always well-formed)."""
    parsed = parse_event_id(_text(raw))
    assert parsed is not None, raw
    return parsed


class LogState:
    """What XINFO STREAM says about the log's bounds at one instant."""

    __slots__ = ("first", "last", "trimmed")

    def __init__(self, first: EventId | None, last: EventId, trimmed: bool) -> None:
        self.first = first
        self.last = last
        # Whether any entry was ever removed; when not, no token can point before the retained log.
        self.trimmed = trimmed

    @classmethod
    def from_xinfo(cls, info: Any) -> LogState:
        """From redis-py's parsed XINFO STREAM reply, or the error a missing stream gives."""
        if isinstance(info, Exception):
            if "no such key" in str(info).lower():
                return cls(None, ZERO_ID, False)
            raise info
        first_entry = info.get("first-entry")
        first = entry_id(first_entry[0]) if first_entry else None
        last = entry_id(info.get("last-generated-id") or b"0-0")
        added, length = info.get("entries-added"), info.get("length", 0)
        trimmed = True if added is None else int(added) > int(length)
        return cls(first, last, trimmed)

    def missed_after(self, token: EventId) -> bool:
        """Whether entries after `token` may have been trimmed (the retained log starts past its successor)."""
        if not self.trimmed:
            return False
        return self.first is None or self.first > successor(token)


async def log_state(redis: Redis, name: str) -> LogState:
    """The log's current bounds."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xinfo_stream(name)
        (info,) = await pipe.execute(raise_on_error=False)
    return LogState.from_xinfo(info)


async def read_page(
    redis: Redis, name: str, after: EventId, count: int
) -> tuple[LogState, list[tuple[bytes, dict[bytes, bytes]]]]:
    """Entries after `after` (exclusive) and the log's bounds, read atomically so a trim cannot slip between."""
    if after == MAX_ID:
        # Redis refuses an exclusive range from its largest id; nothing can follow it anyway.
        return await log_state(redis, name), []
    async with redis.pipeline(transaction=True) as pipe:
        pipe.xinfo_stream(name)
        pipe.xrange(name, min="(" + format_event_id(after), max="+", count=count)
        info, entries = await pipe.execute(raise_on_error=False)
    state = LogState.from_xinfo(info)
    if isinstance(entries, Exception):
        raise entries
    return state, list(entries)
