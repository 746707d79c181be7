"""ListConversations with its filter and query, and SearchMessages: which rows, in which order, paged how.

Every query starts from the caller's visibility (server/visibility.py): the drivers handed to the store carry
the owners the caller may see, one owner each, so no filter, query or page token can widen what is read; a page
token carries only a position, and a scope (a digest of the filter and query) that must match the request's.
Ordering and paging are AIP-158: newest activity first, keyset cursors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from server import paging, search
from server.auth import Caller
from server.config import Config
from server.documents import UNASSIGNED, ConversationDoc, Fields, MessageDoc
from server.errors import InvalidArgument, PermissionDenied
from server.filters import ConversationFilter, parse
from server.reasons import Reason
from server.store import Store
from server.visibility import may_see, visible_owners


def _scope(kind: str, *parts: str) -> str:
    """The token kind of a list read under `parts` (filter, query); the bare kind when there are none."""
    if not any(parts):
        return kind
    digest = hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]
    return f"{kind}:{digest}"


def _owners(cfg: Config, caller: Caller, flt: ConversationFilter) -> tuple[str, ...] | None:
    """The owners to read (None: all), the caller's visibility narrowed by `assignee` and `unassigned`."""
    visible = visible_owners(cfg, caller)
    owners = visible
    if flt.assignee is not None:
        if visible is not None and flt.assignee != caller.user_id:
            raise PermissionDenied("filter: agents may filter by their own assignee only", Reason.FILTER_NOT_ALLOWED)
        owners = (flt.assignee,)
    if flt.unassigned:
        owners = tuple(o for o in (owners if owners is not None else (UNASSIGNED,)) if o == UNASSIGNED)
        if visible is not None and UNASSIGNED not in visible:
            owners = ()
    return owners


def _keeper(
    flt: ConversationFilter, words: list[str], owners: tuple[str, ...] | None
) -> Callable[[ConversationDoc], bool]:
    def keep(doc: ConversationDoc) -> bool:
        owner = doc.get("owner", UNASSIGNED)
        if owners is not None and owner not in owners:
            return False
        if flt.unassigned is False and owner == UNASSIGNED:
            return False
        if flt.unread is not None and (doc.get("unread_count", 0) > 0) != flt.unread:
            return False
        if flt.opted_out is not None and bool(doc.get("opted_out", False)) != flt.opted_out:
            return False
        if flt.contact_id is not None and doc.get("contact_id", "") != flt.contact_id:
            return False
        if flt.labels and not set(flt.labels) <= set(doc.get("labels", [])):
            return False
        if words:
            text = search.conversation_words(
                doc.get("contact_number", ""), doc.get("contact_name", ""), doc.get("last_message_preview", "")
            )
            return search.matches(words, text)
        return True

    return keep


async def list_conversations(
    cfg: Config, store: Store, caller: Caller, size: int, token: str, filter_text: str, query: str
) -> tuple[list[ConversationDoc], str]:
    """A page of the conversations the caller may see that match `filter_text` and `query`."""
    limit = paging.page_size(size)
    flt = parse(filter_text)
    words = search.parse_query("query", query)
    kind = _scope("conversations", flt.canonical, " ".join(words))
    after = paging.decode_token(kind, token)
    owners = _owners(cfg, caller, flt)
    if owners == ():
        return [], ""
    # The one equality an index starts from (the most selective the request has); the rest is refined by keep.
    eq: Fields = {}
    if flt.contact_id is not None:
        eq["contact_id"] = flt.contact_id
    elif flt.labels:
        eq["labels"] = flt.labels[0]
    elif words:
        eq["search_terms"] = search.driving_term(words)
    elif flt.opted_out:
        eq["opted_out"] = True  # an indexed flag (store.py); `keep` still checks every term
    elif flt.unread:
        eq["unread"] = True
    drivers = [eq] if owners is None else [{"owner": o, **eq} for o in owners]
    keep = _keeper(flt, words, owners)
    docs = await store.scan_conversations(drivers, after, limit + 1, keep)
    if len(docs) <= limit:
        return docs, ""
    page = docs[:limit]
    return page, paging.encode_token(kind, page[-1]["last_message_at"], page[-1]["_id"])


async def search_messages(
    cfg: Config, store: Store, caller: Caller, query: str, size: int, token: str
) -> tuple[list[tuple[MessageDoc, ConversationDoc]], str]:
    """A page of the messages (notes included) whose body matches `query`, in the conversations the caller may
    see, newest first, each with its conversation."""
    words = search.parse_query("query", query)
    if not words:
        raise InvalidArgument("query", "required", Reason.INVALID_QUERY)
    limit = paging.page_size(size)
    kind = _scope("message-hits", " ".join(words))
    after = paging.decode_message_token(kind, token)
    owners = visible_owners(cfg, caller)
    eq: Fields = {"search_terms": search.driving_term(words)}
    drivers = [eq] if owners is None else [{"owner": o, **eq} for o in owners]

    def keep(doc: MessageDoc) -> bool:
        return search.matches(words, search.words(doc.get("body", "")))

    docs = await store.scan_messages(drivers, after, limit + 1, keep)
    next_token = ""
    if len(docs) > limit:
        docs = docs[:limit]
        next_token = paging.encode_token(kind, docs[-1]["created"], str(docs[-1]["_id"]))
    # Access follows the conversation, the one owner record: a message's copy of its owner can lag a claim or a
    # transfer, so every hit is checked against its conversation as it is now.
    convs = await store.conversations_by_id([d["conversation_id"] for d in docs])
    hits = []
    for doc in docs:
        conv = convs.get(doc["conversation_id"])
        if conv is not None and may_see(cfg, caller, conv.get("owner", UNASSIGNED)):
            hits.append((doc, conv))
    return hits, next_token
