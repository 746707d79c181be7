"""Group commit (server/batching.py) and the store's batched hot path, against the session's SecantusDB."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from bson import ObjectId

from server import store_metrics
from server.batching import Coalescer
from server.documents import MessageDoc
from server.embedded import EmbeddedServer
from server.store import Store


@pytest.fixture
async def store(mongo: EmbeddedServer) -> AsyncIterator[Store]:
    s = Store.connect(mongo.uri, "batching_" + secrets.token_hex(4))
    await s.ensure_indexes()
    yield s
    await s.client.drop_database(s.messages.database.name)
    await s.close()


def message(body: str, **fields: Any) -> MessageDoc:
    doc: dict[str, Any] = {
        "conversation_id": "c-" + secrets.token_hex(4),
        "direction": "outbound",
        "status": "queued",
        "body": body,
        "owner": "u",
        "created": datetime.now(UTC),
        "updated": datetime.now(UTC),
        "status_history": [],
        **fields,
    }
    return cast(MessageDoc, doc)


async def test_concurrent_requests_share_commands_and_each_gets_its_own_answer() -> None:
    seen: list[list[int]] = []

    async def run(items: list[int]) -> list[int | BaseException]:
        seen.append(items)
        await asyncio.sleep(0.01)
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    double = Coalescer(run)
    answers = await asyncio.gather(*(double(i) for i in range(10)), return_exceptions=True)
    assert answers[0] == 0 and answers[4] == 40
    assert isinstance(answers[3], ValueError) and str(answers[3]) == "odd 3"
    # The first request goes alone at once; the nine that arrived meanwhile wait for it and go as one.
    assert sum(len(batch) for batch in seen) == 10
    assert len(seen) <= 2, seen


async def test_a_failed_command_fails_only_its_own_batch() -> None:
    calls = 0

    async def run(items: list[int]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("store down")
        return items

    echo = Coalescer(run)
    first = asyncio.ensure_future(echo(1))
    await asyncio.sleep(0)  # the first batch (1) is on its way; 2 forms the next one
    second = asyncio.ensure_future(echo(2))
    with pytest.raises(ConnectionError):
        await first
    assert await second == 2


async def test_a_caller_that_gives_up_does_not_cancel_the_others() -> None:
    release = asyncio.Event()

    async def run(items: list[int]) -> list[int]:
        await release.wait()
        return items

    echo = Coalescer(run)
    gone = asyncio.ensure_future(echo(1))
    await asyncio.sleep(0)
    kept = asyncio.ensure_future(echo(2))
    await asyncio.sleep(0)
    gone.cancel()
    release.set()
    assert await kept == 2
    assert gone.cancelled()


async def test_batched_inserts_answer_duplicates_one_by_one(store: Store) -> None:
    key = "rk-" + secrets.token_hex(4)
    docs = [message(f"m{i}", request_key=key if i < 3 else f"{key}-{i}") for i in range(8)]
    stored = await asyncio.gather(*(store.insert_new_message(d) for d in docs))
    # Of three inserts with one request key, exactly one is stored; the other five keys are each stored.
    assert sum(stored[:3]) == 1 and all(stored[3:])
    assert await store.messages.count_documents({"request_key": {"$regex": f"^{key}"}}) == 6
    for doc, ok in zip(docs, stored, strict=True):
        if ok:
            assert (await store.get_message(str(doc["_id"])) or {}).get("body") == doc["body"]


async def test_batched_reads_give_each_caller_its_own_copy(store: Store) -> None:
    doc = message("read me", twilio_sid="SM" + secrets.token_hex(16))
    assert await store.insert_new_message(doc)
    a, b, missing = await asyncio.gather(
        store.get_message(str(doc["_id"])), store.get_message(str(doc["_id"])), store.get_message(str(ObjectId()))
    )
    assert a is not None and b is not None and missing is None
    a["body"] = "changed by one caller"
    assert b["body"] == "read me"
    by_sid = await asyncio.gather(*(store.find_by_sid(doc["twilio_sid"]) for _ in range(3)))
    assert [d and d["_id"] for d in by_sid] == [doc["_id"]] * 3


async def test_pending_clears_are_grouped_and_all_applied(store: Store) -> None:
    docs = [message(f"p{i}", pending=datetime.now(UTC)) for i in range(20)]
    assert all(await asyncio.gather(*(store.insert_new_message(d) for d in docs)))
    batches_before = store._pending_clears.batches
    await asyncio.gather(*(store.clear_pending(d["_id"]) for d in docs))
    assert await store.messages.count_documents({"pending": {"$exists": True}}) == 0
    assert store._pending_clears.batches - batches_before < 20


async def test_store_commands_are_counted_by_operation(store: Store) -> None:
    def counted(operation: str) -> float:
        return sum(
            s.value
            for m in store_metrics.COMMANDS.collect()
            for s in m.samples
            if s.name == "sms_store_commands_total" and s.labels["stage"] == operation
        )

    before = counted("test_op")
    with store_metrics.stage("test_op"):
        await asyncio.gather(*(store.get_message(str(ObjectId())) for _ in range(5)))
        await store.get_conversation("nobody")
    # Five reads by id went as one or two commands, and the conversation read as one more.
    assert 2 <= counted("test_op") - before <= 3
