"""All MongoDB access: messages and conversations, with keyset-paged queries."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from server import store_metrics  # noqa: F401  (registers the command counter before any client is made)
from server.batching import Coalescer
from server.documents import (
    ASSIGNMENT_HISTORY_MAX,
    UNASSIGNED,
    AssignmentEntry,
    ConversationDoc,
    Fields,
    MessageDoc,
    assignment_entry,
    message_oid,
    preview,
)
from server.limits import TIME_MIN
from server.search import number_terms, text_terms
from server.template_store import TemplateStore
from server.timeutil import now

Cursor = tuple[datetime, str]
Doc = TypeVar("Doc", ConversationDoc, MessageDoc)
Key = TypeVar("Key", str, ObjectId)

# A conversation's search terms (server/search.py) come from three writers: its number (create_conversation), its
# contact name (update_conversation) and its last message (count_message). Each writes its own part and, in the
# same update, `search_terms`, their union, which the search indexes hold.
TERM_PARTS = ("number_terms", "name_terms", "preview_terms")
# The keyset scans below read a window of time at a time (see _scan); the first window, and the rows one query of
# a window returns at most.
FIRST_WINDOW = timedelta(hours=1)
SCAN_BATCH = 64


def conversation_search_fields(contact_number: str, contact_name: str, preview_text: str) -> Fields:
    """The stored search fields of a conversation with this number, name and last message preview."""
    parts = {
        "number_terms": number_terms(contact_number),
        "name_terms": text_terms(contact_name),
        "preview_terms": text_terms(preview_text),
    }
    return {**parts, "search_terms": sorted({t for terms in parts.values() for t in terms})}


def conversation_flag_fields(unread_count: int) -> Fields:
    """The stored flags of a conversation with this unread count: `unread` is what ListConversations' `unread`
    filter drives its index from (SecantusDB serves only equalities an index covers, not `unread_count > 0`).
    Every write of `unread_count` writes it in the same update."""
    return {"unread": unread_count > 0}


def _terms_update(fields: Mapping[str, Any], inc: Mapping[str, int]) -> list[Fields]:
    """An update (a pipeline) that sets `fields` (values taken literally), adds `inc`, and recomputes
    `search_terms` from the term parts as they then are: atomic with respect to the other writers of a part."""
    first: Fields = {k: {"$literal": v} for k, v in fields.items()}
    first.update({k: {"$add": [{"$ifNull": [f"${k}", 0]}, n]} for k, n in inc.items()})
    union = {"$setUnion": [{"$ifNull": [f"${part}", []]} for part in TERM_PARTS]}
    return [{"$set": first}, {"$set": {"search_terms": union}}]


# MongoDB's duplicate key error code, as a bulk write reports it per document.
DUPLICATE_KEY = 11000

# Message fields behind sparse indexes: written as None by callers, stored as absent.
SPARSE_FIELDS = frozenset({"send_due", "sent_at", "twilio_sid", "request_key", "pending", "retry_of"})


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


def _each(found: Mapping[Key, Doc], keys: Sequence[Key]) -> list[Doc | None]:
    """The document of each key in order; a key asked twice gets its own copy (callers change what they hold)."""
    answers: list[Doc | None] = []
    given: set[Key] = set()
    for key in keys:
        doc = found.get(key)
        answers.append(copy.deepcopy(doc) if doc is not None and key in given else doc)
        given.add(key)
    return answers


class Store:
    """The sms-gateway collections in one database."""

    def __init__(self, client: AsyncMongoClient[Fields], db_name: str) -> None:
        self.client = client
        db = client[db_name]
        # The typed views of the two collections (pymongo types a database's collections by its client).
        self.messages = cast(AsyncCollection[MessageDoc], db.get_collection("messages"))
        self.conversations = cast(AsyncCollection[ConversationDoc], db.get_collection("conversations"))
        # Canned replies (server/templates.py): their own collection and queries, in a module of their own.
        self.templates = TemplateStore(db)
        # The hot path's reads by key, inserts and marker clears, grouped when they arrive together
        # (server/batching.py): callers see one document, one answer, as before.
        self._conversations_by_id = Coalescer(self._read_conversations)
        self._messages_by_id = Coalescer(self._read_messages)
        self._messages_by_sid = Coalescer(self._read_messages_by_sid)
        self._inserts = Coalescer(self._insert_messages)
        self._pending_clears = Coalescer(self._clear_pending_markers)

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
        await self.templates.ensure_indexes()
        await self.messages.create_index([("conversation_id", ASCENDING), ("created", DESCENDING), ("_id", DESCENDING)])
        # Sparse, not partial: SecantusDB does not use partial indexes for lookups, and a full scan per
        # webhook grows with the collection. Both fields are absent (never null) until they have a value.
        await self.messages.create_index("twilio_sid", name="twilio_sid_sparse", unique=True, sparse=True)
        await self.messages.create_index("request_key", name="request_key_sparse", unique=True, sparse=True)
        await self.messages.create_index("pending", name="pending_sparse", sparse=True)
        # RetryMessage: at most one retry per failed message (absent on every other message).
        await self.messages.create_index("retry_of", name="retry_of_sparse", unique=True, sparse=True)
        # The reconciler's due SCHEDULED messages, and the scheduled count.
        await self.messages.create_index([("status", ASCENDING), ("send_at", ASCENDING)])
        # The worker, the reconciler and GetQueueStats (see "Sending" below).
        await self.messages.create_index([("status", ASCENDING), ("updated", ASCENDING)])
        # Retired: `sent_at` was indexed for counts the delivery counters in Redis now keep (issue 13). An index
        # costs every write of a message (SecantusDB rewrites each index's entries on every update).
        if "sent_at_sparse" in await self.messages.index_information():
            await self.messages.drop_index("sent_at_sparse")
        await self.messages.create_index("send_due", name="send_due_sparse", sparse=True)
        await self.messages.create_index([("status", ASCENDING), ("created", ASCENDING)])
        await self.conversations.create_index(
            [("owner", ASCENDING), ("last_message_at", DESCENDING), ("_id", DESCENDING)]
        )
        await self.conversations.create_index([("last_message_at", DESCENDING), ("_id", DESCENDING)])
        # ListConversations' filter and query (scan_conversations): one index per equality it starts from, with
        # and without the owner (agents read their own and the unassigned ones, one owner at a time).
        for key in ("contact_id", "labels", "search_terms"):
            await self.conversations.create_index(
                [(key, ASCENDING), ("last_message_at", DESCENDING), ("_id", DESCENDING)]
            )
            await self.conversations.create_index(
                [("owner", ASCENDING), (key, ASCENDING), ("last_message_at", DESCENDING), ("_id", DESCENDING)]
            )
        # The filter's flags (`opted_out`, and `unread`, see conversation_flag_fields), for the same scans: only
        # the flagged rows of a time window are read, however few they are.
        for key in ("opted_out", "unread"):
            await self.conversations.create_index(
                [(key, ASCENDING), ("last_message_at", DESCENDING), ("_id", DESCENDING)]
            )
            await self.conversations.create_index(
                [("owner", ASCENDING), (key, ASCENDING), ("last_message_at", DESCENDING), ("_id", DESCENDING)]
            )
        # Conversations stored before the `unread` flag existed get it (once: afterwards none match).
        await self.conversations.update_many(
            {"unread": {"$exists": False}, "unread_count": {"$gt": 0}}, {"$set": conversation_flag_fields(1)}
        )
        # SearchMessages (scan_messages).
        await self.messages.create_index([("search_terms", ASCENDING), ("created", DESCENDING), ("_id", DESCENDING)])
        await self.messages.create_index(
            [("owner", ASCENDING), ("search_terms", ASCENDING), ("created", DESCENDING), ("_id", DESCENDING)]
        )

    # Conversations

    async def get_conversation(self, cid: str) -> ConversationDoc | None:
        return await self._conversations_by_id(cid)

    async def _read_conversations(self, cids: list[str]) -> list[ConversationDoc | None]:
        found = {d["_id"]: d async for d in self.conversations.find({"_id": {"$in": list(set(cids))}})}
        return _each(found, cids)

    async def create_conversation(self, doc: ConversationDoc) -> ConversationDoc:
        """Inserts `doc`, or returns the conversation a concurrent caller created first."""
        fields = conversation_search_fields(
            doc["contact_number"], doc.get("contact_name", ""), doc["last_message_preview"]
        )
        fields.update(conversation_flag_fields(doc["unread_count"]))
        try:
            await self.conversations.insert_one(cast(ConversationDoc, {**doc, **fields}))
            return doc
        except DuplicateKeyError:
            existing = await self.get_conversation(doc["_id"])
            assert existing is not None  # a conversation is never deleted
            return existing

    async def claim_unassigned(self, cid: str, owner: str, contact_id: str) -> bool:
        """Gives an unassigned conversation to `owner` (a reply claims it), recording the change in its history in
        the same update; False when it is not unassigned (any more)."""
        t = now()
        update: Fields = {"owner": owner, "updated": t}
        if contact_id:
            update["contact_id"] = contact_id
        return await self._set_owner(cid, UNASSIGNED, update, assignment_entry(owner, UNASSIGNED, owner, t))

    async def assign(self, cid: str, expected: str, entry: AssignmentEntry) -> bool:
        """Moves a conversation from `expected` to `entry["to"]` and appends `entry` to its history, in one
        conditional update; False when its owner is no longer `expected` (a concurrent change won)."""
        return await self._set_owner(cid, expected, {"owner": entry["to"], "updated": entry["time"]}, entry)

    async def _set_owner(self, cid: str, expected: str, update: Fields, entry: AssignmentEntry) -> bool:
        # The filter on the owner read is the race guard: of two concurrent changes from one owner, one matches.
        history = {"assignment_history": {"$each": [entry], "$slice": -ASSIGNMENT_HISTORY_MAX}}
        result = await self.conversations.update_one(
            {"_id": cid, "owner": expected}, {"$set": update, "$push": history}
        )
        return result.matched_count == 1

    async def update_conversation(self, cid: str, owner: str, fields: Fields) -> bool:
        """Sets `fields` (contact name, id, labels) while the conversation's owner is still `owner`."""
        update: Fields | list[Fields] = {"$set": {**fields, "updated": now()}}
        if "contact_name" in fields:
            # The name is searched (ListConversations' query): its terms change with it, in the same update.
            update = _terms_update({**fields, "name_terms": text_terms(fields["contact_name"]), "updated": now()}, {})
        result = await self.conversations.update_one({"_id": cid, "owner": owner}, update)
        return result.matched_count == 1

    async def count_conversations(self, owner: str) -> int:
        """Conversations assigned to `owner` (UNASSIGNED: nobody)."""
        return await self.conversations.count_documents({"owner": owner})

    async def count_unread(self, owners: tuple[str, ...] | None) -> int:
        """Conversations with unread messages among those of `owners` (None: every owner), one count each on the
        `unread` flag's indexes (a range on unread_count would not be served by one on SecantusDB)."""
        if owners is None:
            return await self.conversations.count_documents({"unread": True})
        total = 0
        for owner in owners:
            total += await self.conversations.count_documents({"owner": owner, "unread": True})
        return total

    async def reassign_messages(self, cid: str, owner: str) -> None:
        """Gives a conversation's messages its new owner (each message carries a copy for its events)."""
        await self.messages.update_many({"conversation_id": cid}, {"$set": {"owner": owner}})

    async def set_message_owner(self, oid: ObjectId, owner: str) -> None:
        """Gives one message its conversation's owner (a message stored as its conversation was claimed)."""
        await self.messages.update_one({"_id": oid}, {"$set": {"owner": owner}})

    async def count_message(
        self, cid: str, message: MessageDoc, unread: bool, extra: Mapping[str, Any], latest: bool = True
    ) -> None:
        """Counts a new message into its conversation and, with `latest`, makes it the last message when it is
        newest (a note is counted but never becomes the last message)."""
        created: datetime = message["created"]
        inc = {"message_count": 1, **({"unread_count": 1} if unread else {})}
        # An unread message leaves the count above zero whatever it was: the flag follows in the same update.
        flags = conversation_flag_fields(1) if unread else {}
        if not latest:
            await self.conversations.update_one(
                {"_id": cid}, {"$inc": inc, "$set": {"updated": now(), **flags, **extra}}
            )
            return
        shown = preview(message.get("body", ""), len(message.get("media", [])))
        last = {
            "last_message_at": created,
            "last_message_preview": shown,
            "last_message_direction": message["direction"],
            "preview_terms": text_terms(shown),
            "updated": now(),
            **flags,
            **extra,
        }
        # Conditional on time so concurrent writers never put an older message on top.
        result = await self.conversations.update_one(
            {"_id": cid, "last_message_at": {"$lte": created}}, _terms_update(last, inc)
        )
        if result.matched_count == 0:
            await self.conversations.update_one(
                {"_id": cid}, {"$inc": inc, "$set": {"updated": now(), **flags, **extra}}
            )

    async def set_opted_out(self, cid: str, opted_out: bool) -> bool:
        """Sets the flag; True when it changed."""
        result = await self.conversations.update_one(
            {"_id": cid, "opted_out": {"$ne": opted_out}}, {"$set": {"opted_out": opted_out, "updated": now()}}
        )
        return result.modified_count == 1

    async def mark_read(self, cid: str) -> bool:
        """Zeroes the unread count; True when it was not zero."""
        result = await self.conversations.update_one(
            {"_id": cid, "unread_count": {"$ne": 0}},
            {"$set": {"unread_count": 0, **conversation_flag_fields(0), "updated": now()}},
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

    async def scan_conversations(
        self,
        drivers: Sequence[Fields],
        after: Cursor | None,
        need: int,
        keep: Callable[[ConversationDoc], bool],
    ) -> list[ConversationDoc]:
        """Up to `need` conversations that match one of `drivers` (equality filters, each served by an index with
        the list order) and `keep`, newest activity first, after the keyset cursor `after`."""
        return await self._scan(self.conversations, "last_message_at", drivers, after, need, keep)

    async def scan_messages(
        self,
        drivers: Sequence[Fields],
        after: tuple[datetime, ObjectId] | None,
        need: int,
        keep: Callable[[MessageDoc], bool],
    ) -> list[MessageDoc]:
        """Up to `need` messages that match one of `drivers` and `keep`, newest first, after `after`."""
        return await self._scan(self.messages, "created", drivers, after, need, keep)

    async def conversations_by_id(self, ids: Sequence[str]) -> dict[str, ConversationDoc]:
        docs = await self.conversations.find({"_id": {"$in": list(set(ids))}}).to_list()
        return {d["_id"]: d for d in docs}

    async def _scan(
        self,
        coll: AsyncCollection[Doc],
        time_field: str,
        drivers: Sequence[Fields],
        after: tuple[datetime, Any] | None,
        need: int,
        keep: Callable[[Doc], bool],
    ) -> list[Doc]:
        """The keyset scan behind every filtered list and search: a window of time at a time, newest first.

        Each query is an equality (one of `drivers`) plus a range of `time_field`, so one index (the equality's
        fields, then the list order) serves it on MongoDB and on SecantusDB alike; SecantusDB reads every row in
        the range before it sorts and limits, so the range is what bounds a query's cost, not the limit. A window
        is sized from the previous one's density to hold about SCAN_BATCH rows, and grows while it finds none, so
        a page costs about (rows it skips + rows it keeps) / SCAN_BATCH queries whatever the collection's size.
        Rows at the cursor's own time are read first by `_id` (no `$or`, which neither store serves from the
        list's index), so ties are neither repeated nor skipped. `keep` refines in Python (the terms no index
        holds), never widens: every driver already carries the caller's visibility.
        """
        order = [(time_field, DESCENDING), ("_id", DESCENDING)]

        def position(doc: Doc) -> tuple[datetime, Any]:
            return doc[time_field], doc["_id"]  # type: ignore[literal-required]

        async def probe(extra: Fields) -> tuple[list[Doc], tuple[datetime, Any] | None]:
            """The rows of every driver in the range, merged, and the position down to which they are complete
            (None: the whole range)."""
            complete: tuple[datetime, Any] | None = None
            merged: list[Doc] = []
            for driver in drivers:
                rows = await coll.find({**driver, **extra}).sort(order).limit(SCAN_BATCH).to_list()
                merged += rows
                if len(rows) == SCAN_BATCH and (complete is None or position(rows[-1]) > complete):
                    complete = position(rows[-1])
            merged.sort(key=position, reverse=True)
            if complete is not None:
                merged = [d for d in merged if position(d) >= complete]
            return merged, complete

        found: list[Doc] = []
        seen: set[Any] = set()

        def take(rows: list[Doc]) -> None:
            for doc in rows:
                if doc["_id"] not in seen and keep(doc):
                    seen.add(doc["_id"])
                    found.append(doc)

        top: datetime | None = None if after is None else after[0]
        tie: Any = None if after is None else after[1]
        window = FIRST_WINDOW
        while len(found) < need:
            if top is not None and tie is not None:
                rows, complete = await probe({time_field: top, "_id": {"$lt": tie}})
                take(rows)
                if complete is not None:
                    tie = complete[1]
                    continue
                tie = None
            if top is not None and top <= TIME_MIN:
                break
            low = max((top or now()) - window, TIME_MIN)
            span: Fields = {"$gte": low} if top is None else {"$gte": low, "$lt": top}
            rows, complete = await probe({time_field: span})
            take(rows)
            if complete is not None:
                # The window held more than a batch: continue below the last row read, with a narrower window.
                top, tie = complete
                window = max(window / 4, timedelta(milliseconds=1))
                continue
            if low <= TIME_MIN:
                break
            top = low
            # Aim the next window at about one batch of rows, from this one's density; grow fast while empty.
            grow = 8.0 if not rows else min(max(SCAN_BATCH / len(rows), 1.5), 8.0)
            window = window * grow
        return found[:need]

    # Messages

    async def insert_new_message(self, doc: MessageDoc) -> bool:
        """Stores a new message (setting its `_id`); False when its sid or request key is already stored."""
        oid = ObjectId()
        # Stored with its search terms (SearchMessages), which the caller's copy does not carry.
        stored = cast(MessageDoc, {**doc, "_id": oid, "search_terms": text_terms(doc.get("body", ""))})
        if not await self._inserts(stored):
            return False
        doc["_id"] = oid
        return True

    async def _insert_messages(self, docs: list[MessageDoc]) -> list[bool | BaseException]:
        """Inserts `docs` in one unordered command: True for each stored, False for a duplicate key, or its error."""
        answers: list[bool | BaseException] = [True] * len(docs)
        try:
            await self.messages.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            for error in exc.details.get("writeErrors", []):
                index = error["index"]
                duplicate = error.get("code") == DUPLICATE_KEY
                answers[index] = False if duplicate else BulkWriteError({"writeErrors": [error], "nInserted": 0})
        return answers

    async def clear_pending(self, oid: ObjectId) -> None:
        """Marks a new message's effects (counts, events, job) as done."""
        await self._pending_clears(oid)

    async def _clear_pending_markers(self, oids: list[ObjectId]) -> list[None]:
        await self.messages.update_many({"_id": {"$in": list(set(oids))}}, {"$unset": {"pending": ""}})
        return [None] * len(oids)

    async def claim_pending(self, oid: ObjectId, since: datetime) -> bool:
        """Takes over finishing an abandoned message; only one claimer wins per abandoned attempt."""
        result = await self.messages.update_one({"_id": oid, "pending": since}, {"$set": {"pending": now()}})
        return result.modified_count == 1

    async def stale_pending(self, before: datetime, limit: int) -> list[MessageDoc]:
        """Messages whose effects were abandoned half-way before `before`."""
        return await self.messages.find({"pending": {"$lt": before}}).limit(limit).to_list()

    async def get_message(self, message_id: str) -> MessageDoc | None:
        oid = message_oid(message_id)
        return None if oid is None else await self._messages_by_id(oid)

    async def _read_messages(self, oids: list[ObjectId]) -> list[MessageDoc | None]:
        found = {d["_id"]: d async for d in self.messages.find({"_id": {"$in": list(set(oids))}})}
        return _each(found, oids)

    async def find_by_sid(self, sid: str) -> MessageDoc | None:
        return await self._messages_by_sid(sid)

    async def _read_messages_by_sid(self, sids: list[str]) -> list[MessageDoc | None]:
        found = {d["twilio_sid"]: d async for d in self.messages.find({"twilio_sid": {"$in": list(set(sids))}})}
        return _each(found, sids)

    async def find_by_request(self, request_key: str) -> MessageDoc | None:
        return await self.messages.find_one({"request_key": request_key})

    async def find_retry_of(self, message_id: str) -> MessageDoc | None:
        """The message that retries `message_id` (RetryMessage), if any."""
        return await self.messages.find_one({"retry_of": message_id})

    async def link_retry(self, message_id: str, retry_id: str) -> MessageDoc | None:
        """Names `retry_id` as the retry of the failed `message_id`; the failed message as it now is, or None when
        it already named it (a replay) or is gone."""
        oid = message_oid(message_id)
        if oid is None:
            return None
        result = await self.messages.update_one(
            {"_id": oid, "retried_by": {"$ne": retry_id}}, {"$set": {"retried_by": retry_id, "updated": now()}}
        )
        return await self.messages.find_one({"_id": oid}) if result.modified_count else None

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

    async def due_scheduled(self, cutoff: datetime, limit: int) -> list[str]:
        """Ids of SCHEDULED messages due before `cutoff`, oldest first: their job should have run by now."""
        due = self.messages.find({"status": "scheduled", "send_at": {"$lt": cutoff}}, {"_id": 1})
        return [str(d["_id"]) async for d in due.sort([("send_at", ASCENDING)]).limit(limit)]

    async def count_scheduled_after(self, t: datetime) -> int:
        """SCHEDULED messages not yet due at `t`."""
        return await self.messages.count_documents({"status": "scheduled", "send_at": {"$gte": t}})

    async def backlog(self, t: datetime) -> list[MessageDoc]:
        """Outbound messages due and not yet handed to Twilio at `t`: QUEUED, due SCHEDULED, SENDING without a sid
        (sender and segments only).

        Reads the whole backlog: GetQueueStats' cost grows with it (issue 13 keeps counters instead).
        """
        fields = {"from": 1, "segments": 1, "twilio_sid": 1}
        queued = await self.messages.find({"status": "queued"}, fields).to_list()
        due = await self.messages.find({"status": "scheduled", "send_at": {"$lt": t}}, fields).to_list()
        sending = await self.messages.find({"status": "sending"}, fields).to_list()
        return queued + due + [d for d in sending if not d.get("twilio_sid")]

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
