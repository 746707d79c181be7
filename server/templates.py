"""Templates (canned replies): CreateTemplate, ListTemplates, UpdateTemplate and DeleteTemplate.

A template is personal (its creator's own) or shared with every user; only admins and the service role
(`caller.sees_all`) make shared ones. Everyone lists the shared ones and their own, by display name (casefolded)
then id. Who may change what:

- a personal template: its owner, and admins and services; to another agent it does not exist (NOT_FOUND, the
  same answer as for an id nobody has: existence is never leaked);
- a shared template: admins and services; agents see it, so they are told no (PERMISSION_DENIED).

Storage is in server/template_store.py, every bound in server/limits.py.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import json
import re
import secrets
from collections.abc import Sequence

from sms.v1 import types_pb2

from server import limits, paging
from server.auth import Caller
from server.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from server.reasons import Reason
from server.template_store import (
    SHARED_SCOPE,
    NameTaken,
    Position,
    TemplateDoc,
    TemplateStore,
    name_key,
    personal_scope,
    position,
)
from server.timeutil import now, to_timestamp

# The placeholders a body may hold, as `{{name}}` (whitespace inside the braces allowed: `{{ name }}`); they are
# filled in when the template is inserted: the conversation's contact, and `agent`, the user inserting it.
PLACEHOLDERS = ("contact_name", "contact_number", "contact_id", "agent")
# Every `{{...}}`: each must name one of PLACEHOLDERS. Non-greedy and across lines, so a `{{` with a later `}}`
# is always checked, and a lone `{{` or `}}` stays literal text.
_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)

# UpdateTemplate's update_mask paths (AIP-134); any other, or none, is INVALID_ARGUMENT.
UPDATABLE = ("display_name", "body")

# A lost race is retried this many times before the caller is told (ABORTED): the access checks read fields
# that never change (scope, owner), so reading again and re-applying is always safe.
UPDATE_ATTEMPTS = 3

_TOKEN_KIND = "templates"


def _not_found(template_id: str) -> NotFound:
    return NotFound(f"template {limits.quote(template_id)} not found", Reason.TEMPLATE_NOT_FOUND)


def _not_allowed(what: str) -> PermissionDenied:
    return PermissionDenied(f"only admins and services may {what} shared templates", Reason.TEMPLATE_NOT_ALLOWED)


def _name_taken(shared: bool) -> AlreadyExists:
    among = "the shared templates" if shared else "your templates"
    return AlreadyExists(f"a template of that name (in any case) exists among {among}", Reason.TEMPLATE_NAME_TAKEN)


def display_name(field: str, value: str) -> str:
    """A display name: 1 to TEMPLATE_NAME_BYTES bytes, not blank."""
    limits.text(field, value, limits.TEMPLATE_NAME_BYTES)
    if not value.strip():
        raise InvalidArgument(field, "required (not blank)")
    return value


def body(field: str, value: str) -> str:
    """A body: 1 to TEMPLATE_BODY_CHARS characters, not blank, with known placeholders only."""
    limits.chars(field, value, limits.TEMPLATE_BODY_CHARS)
    if not value.strip():
        raise InvalidArgument(field, "required (not blank)")
    for match in _PLACEHOLDER.finditer(value):
        if match.group(1).strip() not in PLACEHOLDERS:
            raise InvalidArgument(
                field,
                f"unknown placeholder {limits.quote(match.group(0))}; "
                f"use {', '.join('{{' + p + '}}' for p in PLACEHOLDERS)}",
            )
    return value


def template_to_proto(doc: TemplateDoc) -> types_pb2.Template:
    """The API view of a stored template."""
    return types_pb2.Template(
        id=doc["_id"],
        display_name=doc["display_name"],
        body=doc["body"],
        shared=doc["shared"],
        owner=doc["owner"],
        create_time=to_timestamp(doc["created"]),
        update_time=to_timestamp(doc["updated"]),
    )


# Page tokens: the position after the page's last template, and the query it was read with.


def _token_kind(query_key: str) -> str:
    # A digest, not the query: a token of another query would continue another list (INVALID_ARGUMENT), and the
    # token stays within PAGE_TOKEN_BYTES whatever the query.
    return f"{_TOKEN_KIND}:{hashlib.sha256(query_key.encode()).hexdigest()[:16]}"


def encode_token(query_key: str, after: Position) -> str:
    """An opaque token for the position `after` in the list read with `query_key`.

    At most about 350 bytes: a name_key is a casefolded name of at most 64 bytes, which casefolding at most
    triples (UTF-8, not \\u escapes), an id is 25 characters and the kind 26.
    """
    raw = json.dumps([_token_kind(query_key), *after], separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(query_key: str, token: str) -> Position | None:
    """The position a token names; None for an empty token; INVALID_ARGUMENT INVALID_PAGE_TOKEN when malformed.

    Tokens carry only a position: the queries still read only the caller's scopes, so a token never grants access.
    """
    if not limits.text("page_token", token, limits.PAGE_TOKEN_BYTES):
        return None
    try:
        kind, key, tid = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, TypeError, RecursionError):  # json.JSONDecodeError, binascii.Error and unpacking
        kind = key = tid = None
    if not (isinstance(kind, str) and isinstance(key, str) and isinstance(tid, str)):
        raise InvalidArgument("page_token", "malformed page token", Reason.INVALID_PAGE_TOKEN)
    if kind != _token_kind(query_key):
        what = "belongs to a different query" if kind.startswith(f"{_TOKEN_KIND}:") else "is malformed"
        raise InvalidArgument("page_token", f"this page token {what}", Reason.INVALID_PAGE_TOKEN)
    return key, tid


class Templates:
    """The template calls: the rules of who may do what, over TemplateStore."""

    def __init__(self, store: TemplateStore) -> None:
        self.store = store

    async def _visible(self, caller: Caller, template_id: str, action: str) -> TemplateDoc:
        """The template `caller` may `action` (update, delete): NOT_FOUND for none or another agent's personal one
        (indistinguishable), PERMISSION_DENIED for an agent and a shared one."""
        doc = await self.store.get(template_id)
        if doc is None:
            raise _not_found(template_id)
        if caller.sees_all:
            return doc
        if doc["shared"]:
            raise _not_allowed(action)
        if doc["owner"] != caller.user_id:
            raise _not_found(template_id)
        return doc

    # CreateTemplate

    async def create(self, caller: Caller, template: types_pb2.Template) -> types_pb2.Template:
        """Stores a new template owned by the caller: personal, or shared when asked by an admin or service."""
        if template.shared and not caller.sees_all:
            raise _not_allowed("create")
        name = display_name("template.display_name", template.display_name)
        text = body("template.body", template.body)
        scope = SHARED_SCOPE if template.shared else personal_scope(caller.user_id)
        most = limits.SHARED_TEMPLATES if template.shared else limits.TEMPLATES_PER_USER
        # Counted before the insert, not with it: concurrent creates may each see room and exceed the limit by a
        # few. The limit bounds storage and the list's scans; a few over does neither harm.
        if await self.store.count(scope) >= most:
            whose = "shared templates" if template.shared else "personal templates per user"
            raise FailedPrecondition(f"at most {most} {whose}; delete one first", Reason.TEMPLATE_LIMIT_REACHED)
        at = now()
        doc: TemplateDoc = {
            # 25 characters, like conversation ids: random, so ids tell nothing of other users' templates.
            "_id": f"t{secrets.token_hex(12)}",
            "scope": scope,
            "shared": template.shared,
            "owner": caller.user_id,
            "display_name": name,
            "name_key": name_key(name),
            "body": text,
            "revision": 0,
            "created": at,
            "updated": at,
        }
        try:
            await self.store.insert(doc)
        except NameTaken:
            raise _name_taken(template.shared) from None
        return template_to_proto(doc)

    # ListTemplates

    async def list(
        self, caller: Caller, page_size: int, page_token: str, query: str
    ) -> tuple[builtins.list[types_pb2.Template], str]:
        """The shared templates and the caller's own whose display name starts with `query` (any case), by
        casefolded display name then id, keyset-paged; the next page's token, or "" after the last page.

        One query per scope (an equality and a range each: no $in or $or, which SecantusDB serves from no index),
        each reading at most one row more than the page, merged here.
        """
        size = paging.page_size(page_size)
        prefix = name_key(limits.text("query", query, limits.TEMPLATE_QUERY_BYTES))
        after = decode_token(prefix, page_token)
        merged: builtins.list[TemplateDoc] = []
        for scope in (SHARED_SCOPE, personal_scope(caller.user_id)):
            merged += await self.store.page(scope, prefix, after, size + 1)
        merged.sort(key=position)
        # Each scope gave its first size + 1 rows, so the merged first size + 1 are the list's: more than `size`
        # of them means there is a next page, which starts after the last row returned.
        token = encode_token(prefix, position(merged[size - 1])) if len(merged) > size else ""
        return [template_to_proto(d) for d in merged[:size]], token

    # UpdateTemplate

    async def update(self, caller: Caller, template: types_pb2.Template, paths: Sequence[str]) -> types_pb2.Template:
        """Sets the masked fields (display_name, body) of a template the caller may change (see the module)."""
        tid = limits.ident("template.id", template.id)
        if not tid:
            raise InvalidArgument("template.id", "required")
        limits.each("update_mask.paths", list(paths), limits.MASK_PATHS_COUNT, limits.MASK_PATH_BYTES)
        if not paths:
            raise InvalidArgument(
                "update_mask", f"name at least one of {', '.join(UPDATABLE)}", Reason.INVALID_UPDATE_MASK
            )
        for path in paths:
            if path not in UPDATABLE:
                raise InvalidArgument(
                    "update_mask",
                    f"{limits.quote(path)} cannot be updated; only {', '.join(UPDATABLE)}",
                    Reason.INVALID_UPDATE_MASK,
                )
        fields: dict[str, str] = {}
        if "display_name" in paths:
            fields["display_name"] = display_name("template.display_name", template.display_name)
            fields["name_key"] = name_key(fields["display_name"])
        if "body" in paths:
            fields["body"] = body("template.body", template.body)
        doc = await self._visible(caller, tid, "update")
        for _ in range(UPDATE_ATTEMPTS):
            at = now()
            try:
                done = await self.store.update(tid, doc["revision"], dict(fields), at)
            except NameTaken:
                raise _name_taken(doc["shared"]) from None
            if done:
                # What this update stored: the document read, at the revision it was conditional on, plus the fields.
                fresh = doc.copy()
                fresh["display_name"] = fields.get("display_name", doc["display_name"])
                fresh["name_key"] = fields.get("name_key", doc["name_key"])
                fresh["body"] = fields.get("body", doc["body"])
                fresh["revision"] = doc["revision"] + 1
                fresh["updated"] = at
                return template_to_proto(fresh)
            # Changed (or deleted) since it was read: read it again; its scope and owner, hence the access
            # decision, cannot have changed, so the update still applies.
            reread = await self.store.get(tid)
            if reread is None:
                raise _not_found(tid)
            doc = reread
        raise Aborted("the template changed while this call ran; try again", Reason.CONCURRENT_UPDATE)

    # DeleteTemplate

    async def delete(self, caller: Caller, template_id: str) -> None:
        """Deletes a template the caller may change (see the module)."""
        if not template_id:
            raise InvalidArgument("template_id", "required")
        await self._visible(caller, limits.ident("template_id", template_id), "delete")
        if not await self.store.delete(template_id):
            raise _not_found(template_id)
