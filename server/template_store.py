"""All MongoDB access for the `templates` collection (canned replies; the rules are in server/templates.py).

One document per template. Its `scope` says whose namespace it lives in: SHARED_SCOPE for the shared ones, and
`personal_scope(owner)` for a user's own. A unique index on (scope, name_key) makes display names unique per scope
(case-insensitively) and serves every list query: each query is an equality on `scope` plus a range on `name_key`,
which MongoDB and SecantusDB (an index only when it covers every field of the filter; no $in, no $or) both walk.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict, cast

from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from server.documents import Fields

# The scope of the shared templates. Personal scopes carry a prefix (personal_scope) so that no user id, not
# even one spelled "shared", can land a personal template among the shared ones or read theirs as its own.
SHARED_SCOPE = "shared"
PERSONAL_PREFIX = "user:"
# The unique index behind display-name uniqueness; its name tells a duplicate name from any other duplicate key.
NAME_INDEX = "scope_name_key_unique"
# The largest code point: `prefix + NAME_KEY_END` sorts after every name_key that starts with `prefix` (MongoDB
# and Python both compare strings by code point, which for UTF-8 is byte order). U+FFFF would miss the names
# whose next character lies above it (emoji and the other astral characters).
NAME_KEY_END = "\U0010ffff"

# A position in the list: (name_key, _id), the order ListTemplates returns.
Position = tuple[str, str]


class TemplateDoc(TypedDict):
    """A stored template."""

    _id: str
    # SHARED_SCOPE or personal_scope(owner): the namespace the display name is unique in.
    scope: str
    shared: bool
    # The user who made it (also for shared ones).
    owner: str
    display_name: str
    # display_name casefolded: uniqueness, order and the prefix query are case-insensitive.
    name_key: str
    body: str
    # Bumped by every update: the condition of the next one, so a concurrent change is never overwritten.
    revision: int
    created: datetime
    updated: datetime


class NameTaken(Exception):
    """Another template of the same scope already has this display name (any case)."""


def personal_scope(owner: str) -> str:
    """The scope of `owner`'s personal templates."""
    return PERSONAL_PREFIX + owner


def name_key(display_name: str) -> str:
    """What display names are compared, ordered and searched by."""
    return display_name.casefold()


def position(doc: TemplateDoc) -> Position:
    """Where `doc` stands in the list order."""
    return doc["name_key"], doc["_id"]


def _is_name_clash(error: DuplicateKeyError) -> bool:
    details = error.details or {}
    return NAME_INDEX in str(details.get("errmsg", error)) or "name_key" in str(details.get("keyPattern", ""))


class TemplateStore:
    """The `templates` collection."""

    def __init__(self, db: AsyncDatabase[Fields]) -> None:
        # The typed view of the collection (pymongo types a database's collections by its client).
        self.coll = cast(AsyncCollection[TemplateDoc], db.get_collection("templates"))

    async def ensure_indexes(self) -> None:
        """The one index every query here is served by (lookups by id use `_id`'s own)."""
        # Unique per scope, so a scope holds at most one row per name_key: ordering by name_key alone is total
        # within a scope, and the list needs no `_id` in the index (see page).
        await self.coll.create_index([("scope", ASCENDING), ("name_key", ASCENDING)], name=NAME_INDEX, unique=True)

    async def insert(self, doc: TemplateDoc) -> None:
        """Stores a new template; NameTaken when its scope already has one of that name."""
        try:
            await self.coll.insert_one(doc)
        except DuplicateKeyError as e:
            if _is_name_clash(e):
                raise NameTaken from None
            raise

    async def get(self, template_id: str) -> TemplateDoc | None:
        return await self.coll.find_one({"_id": template_id})

    async def count(self, scope: str) -> int:
        """Templates in `scope` (for the per-scope limits)."""
        return await self.coll.count_documents({"scope": scope})

    async def page(self, scope: str, prefix: str, after: Position | None, limit: int) -> list[TemplateDoc]:
        """Up to `limit` templates of `scope` whose name_key starts with `prefix`, after `after`, in list order.

        The filter is `scope` and one range on `name_key`, no `$or`, so the unique index serves it on both stores.
        A name_key occurs at most once per scope, so the rows at the cursor's own name_key are at most one, read
        with `$gte` and dropped here when not after the cursor (the tie on `_id` is between scopes only).
        """
        span: Fields = {"$gte": prefix, "$lt": prefix + NAME_KEY_END}
        if after is not None and after[0] > prefix:
            span["$gte"] = after[0]
        # A range with nothing in it (a cursor past the prefix's names): no query at all.
        if span["$gte"] >= span["$lt"]:
            return []
        query: Fields = {"scope": scope, "name_key": span}
        # SecantusDB reads the whole range before it sorts and limits; the per-scope limits bound that.
        rows = await self.coll.find(query).sort([("name_key", ASCENDING)]).limit(limit + 1).to_list()
        if after is not None:
            rows = [d for d in rows if position(d) > after]
        return rows[:limit]

    async def update(self, template_id: str, revision: int, fields: Fields, at: datetime) -> bool:
        """Sets `fields` (display name and its key, body) while the template is still at `revision`.

        False when it was changed or deleted meanwhile; NameTaken when the new name is taken in its scope.
        """
        try:
            result = await self.coll.update_one(
                {"_id": template_id, "revision": revision},
                {"$set": {**fields, "updated": at}, "$inc": {"revision": 1}},
            )
        except DuplicateKeyError as e:
            if _is_name_clash(e):
                raise NameTaken from None
            raise
        return result.matched_count == 1

    async def delete(self, template_id: str) -> bool:
        """Deletes the template; False when there was none."""
        result = await self.coll.delete_one({"_id": template_id})
        return result.deleted_count == 1
