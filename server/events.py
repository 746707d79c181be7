"""The event log: every state change, after it is stored, appended to one bounded Redis stream."""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio import Redis
from sms.v1 import types_pb2

from server.convert import conversation_to_proto, message_to_proto
from server.timeutil import now, to_timestamp

log = logging.getLogger(__name__)

Doc = dict[str, Any]

# Stream entry fields. `owner` and `conversation_id` let a reader route an event without parsing it.
F_OWNER, F_CONVERSATION, F_DATA = b"owner", b"conversation_id", b"data"


class EventLog:
    """Appends events to the stream `name`, keeping about `retention` of them."""

    def __init__(self, redis: Redis, name: str, retention: int) -> None:
        self.redis = redis
        self.name = name
        self.retention = retention

    async def append(self, event: types_pb2.Event, owner: str, conversation_id: str) -> str | None:
        """Appends `event` (its id is assigned by Redis); returns the id, or None when Redis failed.

        A failed append must not fail the write that already happened; readers detect the gap.
        """
        fields: dict[bytes, bytes | str] = {
            F_OWNER: owner, F_CONVERSATION: conversation_id, F_DATA: event.SerializeToString(),
        }
        try:
            entry_id = await self.redis.xadd(self.name, fields, maxlen=self.retention, approximate=True)  # type: ignore[arg-type]
        except Exception:
            log.exception("event append failed (%s)", types_pb2.EventType.Name(event.type))
            return None
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def message(self, kind: types_pb2.EventType.ValueType, doc: Doc) -> str | None:
        """Appends a message event carrying the message as it now is."""
        event = types_pb2.Event(type=kind, time=to_timestamp(now()), message=message_to_proto(doc))
        return await self.append(event, doc.get("owner", ""), doc["conversation_id"])

    async def conversation(self, doc: Doc) -> str | None:
        """Appends a conversation-updated event carrying the conversation as it now is."""
        event = types_pb2.Event(
            type=types_pb2.EVENT_TYPE_CONVERSATION_UPDATED, time=to_timestamp(now()),
            conversation=conversation_to_proto(doc),
        )
        return await self.append(event, doc.get("owner", ""), doc["_id"])
