"""All MongoDB access: messages and conversations, with keyset-paged queries."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

from server.documents import UNASSIGNED, ConversationDoc, Fields, MessageDoc, message_oid, preview
from server.timeutil import now

Cursor = tuple[datetime, str]

# Message fields behind sparse indexes: written as None by callers, stored as absent.
SPARSE_FIELDS = frozenset({"send_due", "sent_at", "twilio_sid", "request_key", "pending"})


def applied(doc: MessageDoc, update: Fields) -> MessageDoc:
    """`doc` after a top-level $set/$unset/$push/$inc update, as MongoDB applies it."""
    known = {"$set", "$unset", "$push", "$inc"}
    if not set(update) <= known or any("." in key for op in update.values() for key in op):
        raise ValueError(f"cannot apply {sorted(update)} locally")
    new: Fields = dict(doc)
    new.update(update.get("$set", {}))
    for key in update.get("$unset", {}):
        new.pop(key, None)
    for key, value in update.get("$push", {}).items():
        new[key] = [*new.get(key, []), value]
    for key, value in update.get("$inc", {}).items():
        new[key] = new.get(key, 0) + value
    return cast(MessageDoc, new)


class Store:
    """The sms-gateway collections in one database."""

    def __init__(self, client: AsyncMongoClient[Fields], db_name: str) -> None:
        self.client = client
        db = client[db_name]
        # The typed views of the two collections (pymongo types a database's collections by its client).
        self.messages = cast(AsyncCollection[MessageDoc], db.get_collection("messages"))
        self.conversations = cast(AsyncCollection[ConversationDoc], db.get_collection("conversations"))

    @classmethod
    def connect(cls, uri: str, db_name: str) -> Store:
        """A store over a new client; connections are made lazily."""
        client: AsyncMongoClient[Fields] = AsyncMongoClient(
            uri, tz_aware=True, serverSelectionTimeoutMS=3000, connectTimeoutMS=3000
        )
        return cls(client, db_name)

    async def close(self) -> None:
        await self.client.close()

    async def ping(self) -> None:
        """Raises when MongoDB does not answer."""
        await self.client.admin.command("ping")

    async def ensure_indexes(self) -> None:
        """Indexes for every query below; each list query is served by a keyset index."""
        await self.messages.create_index([("conversation_id", ASCENDING), ("created", DESCENDING), ("_id", DESCENDING)])
        # Sparse, not partial: SecantusDB does not use partial indexes for lookups, and a full scan per
        # webhook grows with the collection. Both fields are absent (never null) until they have a value.
        await self.messages.create_index("twilio_sid", name="twilio_sid_sparse", unique=True, sparse=True)
        await self.messages.create_index("request_key", name="request_key_sparse", unique=True, sparse=True)
        await self.messages.create_index("pending", name="pending_sparse", sparse=True)
        # The worker, the reconciler and GetQueueStats (see "Sending" below).
        await self.messages.create_index([("status", ASCENDING), ("updated", ASCENDING)])
        await self.messages.create_index("sent_at", name="sent_at_sparse", sparse=True)
        await self.messages.create_index("send_due", name="send_due_sparse", sparse=True)
        await self.messages.create_index([("status", ASCENDING), ("created", ASCENDING)])
        await self.conversations.create_index(
            [("owner", ASCENDING), ("last_message_at", DESCENDING), ("_id", DESCENDING)]
        )
        await self.conversations.create_index([("last_message_at", DESCENDING), ("_id", DESCENDING)])

    # Conversations

    async def get_conversation(self, cid: str) -> ConversationDoc | None:
        return await self.conversations.find_one({"_id": cid})

    async def create_conversation(self, doc: ConversationDoc) -> ConversationDoc:
        """Inserts `doc`, or returns the conversation a concurrent caller created first."""
        try:
            await self.conversations.insert_one(doc)
            return doc
        except DuplicateKeyError:
            existing = await self.get_conversation(doc["_id"])
            assert existing is not None  # a conversation is never deleted
            return existing

    async def claim_unassigned(self, cid: str, owner: str, contact_id: str) -> bool:
        """Gives an unassigned conversation to `owner`; False when it is not unassigned (any more)."""
        update: Fields = {"owner": owner, "updated": now()}
        if contact_id:
            update["contact_id"] = contact_id
        result = await self.conversations.update_one({"_id": cid, "owner": UNASSIGNED}, {"$set": update})
        return result.matched_count == 1

    async def reassign_messages(self, cid: str, owner: str) -> None:
        """Gives a conversation's messages its new owner (each message carries a copy for its events)."""
        await self.messages.update_many({"conversation_id": cid}, {"$set": {"owner": owner}})

    async def set_message_owner(self, oid: ObjectId, owner: str) -> None:
        """Gives one message its conversation's owner (a message stored as its conversation was claimed)."""
        await self.messages.update_one({"_id": oid}, {"$set": {"owner": owner}})

    async def count_message(self, cid: str, message: MessageDoc, unread: bool, extra: Mapping[str, Any]) -> None:
        """Counts a new message into its conversation and makes it the last message when it is newest."""
        created: datetime = message["created"]
        inc = {"message_count": 1, **({"unread_count": 1} if unread else {})}
        last = {
            "last_message_at": created,
            "last_message_preview": preview(message.get("body", ""), len(message.get("media", []))),
            "last_message_direction": message["direction"],
            "updated": now(),
            **extra,
        }
        # Conditional on time so concurrent writers never put an older message on top.
        result = await self.conversations.update_one(
            {"_id": cid, "last_message_at": {"$lte": created}}, {"$set": last, "$inc": inc}
        )
        if result.matched_count == 0:
            await self.conversations.update_one({"_id": cid}, {"$inc": inc, "$set": {"updated": now(), **extra}})

    async def set_opted_out(self, cid: str, opted_out: bool) -> bool:
        """Sets the flag; True when it changed."""
        result = await self.conversations.update_one(
            {"_id": cid, "opted_out": {"$ne": opted_out}}, {"$set": {"opted_out": opted_out, "updated": now()}}
        )
        return result.modified_count == 1

    async def mark_read(self, cid: str) -> bool:
        """Zeroes the unread count; True when it was not zero."""
        result = await self.conversations.update_one(
            {"_id": cid, "unread_count": {"$ne": 0}}, {"$set": {"unread_count": 0, "updated": now()}}
        )
        return result.modified_count == 1

    async def list_conversations(self, owner: str | None, after: Cursor | None, limit: int) -> list[ConversationDoc]:
        """Conversations by last activity, newest first, after the keyset cursor `after`."""
        query: Fields = {} if owner is None else {"owner": owner}
        if after is not None:
            t, cid = after
            query["$or"] = [{"last_message_at": {"$lt": t}}, {"last_message_at": t, "_id": {"$lt": cid}}]
        cursor = self.conversations.find(query).sort([("last_message_at", DESCENDING), ("_id", DESCENDING)])
        return await cursor.limit(limit).to_list()

    # Messages

    async def insert_new_message(self, doc: MessageDoc) -> bool:
        """Stores a new message (setting its `_id`); False when its sid or request key is already stored."""
        try:
            result = await self.messages.insert_one(doc)
        except DuplicateKeyError:
            return False
        doc["_id"] = result.inserted_id
        return True

    async def clear_pending(self, oid: ObjectId) -> None:
        """Marks a new message's effects (counts, events, job) as done."""
        await self.messages.update_one({"_id": oid}, {"$unset": {"pending": ""}})

    async def claim_pending(self, oid: ObjectId, since: datetime) -> bool:
        """Takes over finishing an abandoned message; only one claimer wins per abandoned attempt."""
        result = await self.messages.update_one({"_id": oid, "pending": since}, {"$set": {"pending": now()}})
        return result.modified_count == 1

    async def stale_pending(self, before: datetime, limit: int) -> list[MessageDoc]:
        """Messages whose effects were abandoned half-way before `before`."""
        return await self.messages.find({"pending": {"$lt": before}}).limit(limit).to_list()

    async def get_message(self, message_id: str) -> MessageDoc | None:
        oid = message_oid(message_id)
        return None if oid is None else await self.messages.find_one({"_id": oid})

    async def find_by_sid(self, sid: str) -> MessageDoc | None:
        return await self.messages.find_one({"twilio_sid": sid})

    async def find_by_request(self, request_key: str) -> MessageDoc | None:
        return await self.messages.find_one({"request_key": request_key})

    async def list_messages(self, cid: str, after: tuple[datetime, ObjectId] | None, limit: int) -> list[MessageDoc]:
        """A conversation's messages, newest first, after the keyset cursor `after`."""
        query: Fields = {"conversation_id": cid}
        if after is not None:
            t, oid = after
            query["$or"] = [{"created": {"$lt": t}}, {"created": t, "_id": {"$lt": oid}}]
        cursor = self.messages.find(query).sort([("created", DESCENDING), ("_id", DESCENDING)])
        return await cursor.limit(limit).to_list()

    async def update_message(self, doc: MessageDoc, expect: Fields, update: Fields) -> MessageDoc | None:
        """Applies `update` to `doc`'s message while `expect` still holds; the message as it now is, or None.

        The filter carries the state the caller read, so a concurrent change makes it match nothing instead
        of being overwritten. The result is `doc` with the update applied here rather than read back:
        SecantusDB pays mostly per command, and find_one_and_update is slower still (design.md).
        """
        fields = update.setdefault("$set", {})
        fields["updated"] = now()
        for key in SPARSE_FIELDS & {k for k, v in fields.items() if v is None}:
            # Absent, not null: a sparse index still holds nulls, and SecantusDB walks them on range queries.
            del fields[key]
            update.setdefault("$unset", {})[key] = ""
        result = await self.messages.update_one({"_id": doc["_id"], **expect}, update)
        if result.matched_count == 0:
            return None
        return applied(doc, update)

    # Sending (the worker's send state, the reconciler and the queue statistics)
    #
    # SecantusDB uses an index only when it covers every field of the filter (no $in, no partial indexes), so
    # these queries filter on indexed fields alone and refine in Python; `send_due` exists to be indexed.

    async def set_send_state(self, doc: MessageDoc, fields: Fields) -> MessageDoc | None:
        """Writes worker bookkeeping (in-flight marker, retry time, last error) that is not a status change."""
        return await self.update_message(doc, {}, {"$set": fields})

    async def stale_outbound(self, cutoff: datetime, limit: int) -> list[str]:
        """Ids of messages the worker owes action since before `cutoff`: QUEUED and untouched, or an attempt or
        retry (`send_due`) older than that; oldest first."""
        queued = self.messages.find({"status": "queued", "updated": {"$lt": cutoff}}, {"_id": 1})
        due = self.messages.find({"send_due": {"$lt": cutoff}}, {"_id": 1})
        ids = [d["_id"] async for d in queued.sort([("updated", ASCENDING)]).limit(limit)]
        ids += [d["_id"] async for d in due.sort([("send_due", ASCENDING)]).limit(limit)]
        return [str(oid) for oid in ids[:limit]]

    async def count_status_since(self, status: str, since: datetime) -> int:
        return await self.messages.count_documents({"status": status, "updated": {"$gte": since}})

    async def count_sent_since(self, since: datetime) -> int:
        """Messages handed to Twilio (a sid stored by the worker) since `since`."""
        return await self.messages.count_documents({"sent_at": {"$gte": since}})

    async def waiting(self) -> tuple[int, list[MessageDoc]]:
        """The QUEUED count, and the messages with an attempt in flight or a retry pending (`send_due` set)."""
        queued = await self.messages.count_documents({"status": "queued"})
        due = await self.messages.find(
            {"send_due": {"$gte": datetime(1970, 1, 1, tzinfo=UTC)}},
            {"retry_at": 1, "in_flight": 1, "created": 1},
        ).to_list()
        return queued, due

    async def oldest_queued(self) -> datetime | None:
        """Creation time of the oldest QUEUED message."""
        doc = await self.messages.find_one({"status": "queued"}, {"created": 1}, sort=[("created", ASCENDING)])
        return None if doc is None else doc["created"]
