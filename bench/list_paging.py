"""Benchmark of ListConversations' filters and query and of SearchMessages, at two sizes on the embedded store.

Starts its own embedded SecantusDB and Valkey and `sms-gateway server` on free ports, seeds two databases
directly through bulk inserts (the stored shape the server writes, search terms included: server/store.py), one
at --conversations / --messages and one at a tenth of that, runs each call --calls times against each, and
prints p50/p99 and the ratio of the large to the small one (target: p99 < 50 ms, ratio within 1.5x).

    .venv/bin/python bench/list_paging.py [--conversations 10000] [--messages 100000] [--calls 50] [--json PATH]
    .venv/bin/python bench/list_paging.py --conversations 500 --messages 2000 --calls 5   # smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from pymongo import AsyncMongoClient, MongoClient
from sms.v1 import sms_pb2, sms_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: its packages and tests.support

from bench.common import pct, write_json
from server.auth import mint_token
from server.config import without_settings
from server.documents import conversation_id, preview
from server.embedded import start_mongo, start_redis
from server.search import text_terms
from server.store import Store, conversation_flag_fields, conversation_search_fields
from tests.support.launch import start_server

JWT_SECRET = "bench-jwt-secret-of-at-least-32-bytes"
INGEST_SECRET = "bench-ingest-secret-of-at-least-32-bytes"
OUR_NUMBER = "+15005550006"
AGENTS = [f"agent{i}" for i in range(50)]
FIRST = ["Maria", "John", "Wei", "Aisha", "Carlos", "Olga", "Kenji", "Fatima", "Liam", "Zoë", "Noah", "Priya"]
LAST = ["Garcia", "Smith", "Chen", "Khan", "Silva", "Ivanova", "Sato", "Haddad", "Murphy", "Müller", "Patel"]
VOCAB = (
    "order shipped delivery refund invoice payment tomorrow thanks please confirm appointment schedule "
    "question account password address change cancel update status tracking number received late early "
    "price discount coupon help support manager callback weekend morning evening store pickup"
).split()


SEED_BATCH = 2000


def seed(uri: str, db_name: str, conversations: int, messages: int, rng: random.Random) -> None:
    """Conversations over the last 30 days, `messages` spread over them, stored as the server stores them, in
    large `insert_many` batches (SecantusDB pays mostly per command), with progress printed."""
    client: MongoClient[dict[str, Any]] = MongoClient(uri, tz_aware=True)
    db = client[db_name]
    started = time.perf_counter()
    inserted = 0

    def flush(coll: Any, docs: list[dict[str, Any]], total: int, what: str) -> None:
        nonlocal inserted
        if not docs:
            return
        coll.insert_many(docs, ordered=False)
        inserted += len(docs)
        print(f"  {what}: {inserted}/{total} in {time.perf_counter() - started:.1f} s", flush=True)
        docs.clear()

    end = datetime.now(UTC)
    per = max(messages // conversations, 1)
    convs: list[dict[str, Any]] = []
    msgs: list[dict[str, Any]] = []
    for i in range(conversations):
        number = f"+1{rng.choice(['415', '628', '650', '212'])}555{i:04d}"[:12] if i < 10_000 else f"+1303{i:07d}"
        owner = "" if rng.random() < 0.2 else rng.choice(AGENTS)
        last_at = end - timedelta(seconds=rng.uniform(0, 30 * 86400))
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}" if rng.random() < 0.7 else ""
        cid = conversation_id(OUR_NUMBER, number)
        body = ""
        for k in range(per):
            body = " ".join(rng.choice(VOCAB) for _ in range(8)) + f" #{i}-{k}"
            created = last_at - timedelta(minutes=10 * (per - 1 - k))
            msgs.append(
                {
                    "conversation_id": cid,
                    "direction": "inbound" if k % 2 else "outbound",
                    "from": number,
                    "to": OUR_NUMBER,
                    "body": body,
                    "media": [],
                    "status": "received" if k % 2 else "delivered",
                    "status_history": [],
                    "owner": owner,
                    "contact_id": f"crm-{i}",
                    "attempts": 0,
                    "created": created,
                    "updated": created,
                    "search_terms": text_terms(body),
                }
            )
        shown = preview(body, 0)
        unread = rng.choice([0, 0, 1, 3])
        convs.append(
            {
                "_id": cid,
                "our_number": OUR_NUMBER,
                "contact_number": number,
                "contact_id": f"crm-{i}",
                "contact_name": name,
                "labels": ["vip"] if rng.random() < 0.05 else [],
                "owner": owner,
                "last_message_preview": shown,
                "last_message_at": last_at,
                "last_message_direction": "inbound",
                "unread_count": unread,
                "message_count": per,
                "opted_out": rng.random() < 0.03,
                "created": last_at,
                "updated": last_at,
                **conversation_search_fields(number, name, shown),
                **conversation_flag_fields(unread),
            }
        )
        if len(msgs) >= SEED_BATCH:
            flush(db.messages, msgs, conversations * per, "messages")
    flush(db.messages, msgs, conversations * per, "messages")
    inserted = 0
    for batch in range(0, len(convs), SEED_BATCH):
        flush(db.conversations, convs[batch : batch + SEED_BATCH], conversations, "conversations")
    client.close()


CASES: list[tuple[str, str, str, str, str]] = [
    # name, role, user, filter, query
    ("admin: no filter", "admin", "admin", "", ""),
    ("agent: no filter", "agent", "agent7", "", ""),
    ("admin: unread", "admin", "admin", "unread", ""),
    ("agent: unread", "agent", "agent7", "unread", ""),
    ("admin: unassigned", "admin", "admin", "unassigned", ""),
    ("admin: opted_out", "admin", "admin", "opted_out", ""),
    ("admin: label = vip", "admin", "admin", 'label = "vip"', ""),
    ("agent: label = vip", "agent", "agent7", 'label = "vip"', ""),
    ("admin: assignee", "admin", "admin", 'assignee = "agent7"', ""),
    ("service: contact_id", "service", "crm", 'contact_id = "crm-42"', ""),
    ("admin: query name", "admin", "admin", "", "maria"),
    ("agent: query name", "agent", "agent7", "", "maria garcia"),
    ("admin: query number", "admin", "admin", "", "(415) 555-00"),
    ("admin: query preview word", "admin", "admin", "", "refund"),
]
SEARCHES = [
    ("search: admin common word", "admin", "admin", "refund"),
    ("search: agent two words", "agent", "agent7", "refund tomorrow"),
    ("search: admin rare", "admin", "admin", "#42-3"),
]


def case_key(name: str) -> str:
    """A case's name as a JSON key: "admin: label = vip" -> "admin_label_vip"."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


async def measure(addr: str, calls: int, page_size: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = sms_pb2_grpc.SmsServiceStub(ch)

        async def timed(name: str, call: Any) -> None:
            times = []
            for _ in range(calls):
                t = time.perf_counter()
                resp = await call()
                times.append((time.perf_counter() - t) * 1000)
            out[name] = {
                "p50_ms": statistics.median(times),
                "p99_ms": pct(times, 0.99),
                "results": float(len(getattr(resp, "conversations", None) or getattr(resp, "hits", []))),
            }

        for name, role, user, flt, query in CASES:
            md = (("authorization", f"Bearer {mint_token(JWT_SECRET, user, role)}"),)
            req = sms_pb2.ListConversationsRequest(filter=flt, query=query, page_size=page_size)
            await timed(name, lambda req=req, md=md: stub.ListConversations(req, metadata=md))
        for name, role, user, query in SEARCHES:
            md = (("authorization", f"Bearer {mint_token(JWT_SECRET, user, role)}"),)
            sreq = sms_pb2.SearchMessagesRequest(query=query, page_size=page_size)
            await timed(name, lambda sreq=sreq, md=md: stub.SearchMessages(sreq, metadata=md))
    return out


async def _indexes(uri: str, db_name: str) -> None:
    # SecantusDB answers nothing else while it builds an index (minutes for the messages' search terms): with the
    # store's own 3 s timeouts the client's monitor gives up on it and cancels the build's command.
    patient: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, tz_aware=True, connectTimeoutMS=3_600_000)
    store = Store(patient, db_name)
    try:
        await store.ensure_indexes()
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=10_000)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=50, help="calls per case and size")
    parser.add_argument("--page-size", type=int, default=50)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    rng = random.Random(11)
    with tempfile.TemporaryDirectory(prefix="bench-list-") as tmp:
        # On disk: the in-memory store's cache cannot hold 100,000 messages with their search-term index.
        mongo = start_mongo(Path(tmp) / "mongo")
        redis_server = start_redis(Path(tmp))
        measured: dict[str, dict[str, dict[str, float]]] = {}
        try:
            sizes = {
                "large": (args.conversations, args.messages),
                "small": (args.conversations // 10, args.messages // 10),
            }
            for label, (n_conv, n_msg) in sizes.items():
                db_name = f"bench_{label}_{uuid.uuid4().hex[:6]}"
                t = time.perf_counter()
                seed(mongo.uri, db_name, n_conv, n_msg, rng)
                print(f"seeded {label}: {n_conv} conversations, {n_msg} messages in {time.perf_counter() - t:.1f} s")
                # Indexes after the data (the store's own ensure_indexes, built here rather than within the
                # server's start-up wait; the server's call then finds them in place).
                t = time.perf_counter()
                asyncio.run(_indexes(mongo.uri, db_name))
                print(f"indexed {label} in {time.perf_counter() - t:.1f} s", flush=True)
                env = without_settings(os.environ)
                env.update(
                    MONGODB_URI=mongo.uri,
                    MONGODB_DB=db_name,
                    REDIS_URL=redis_server.uri,
                    SMS_JWT_SECRET=JWT_SECRET,
                    SMS_INGEST_SECRET=INGEST_SECRET,
                    TWILIO_FROM_NUMBER=OUR_NUMBER,
                )
                proc, addr = start_server(env)
                try:
                    measured[label] = asyncio.run(measure(addr, args.calls, args.page_size))
                finally:
                    proc.stop()
        finally:
            redis_server.stop()
            mongo.stop()
    results: dict[str, Any] = {
        "conversations": args.conversations,
        "messages": args.messages,
        "calls": args.calls,
        "page_size": args.page_size,
    }
    print(f"\n{'case':32s} {'p50 ms':>8s} {'p99 ms':>8s} {'rows':>5s} | {'small p99':>9s} {'ratio p99':>9s}")
    worst, flat = 0.0, True
    for name, fig in measured["large"].items():
        small = measured["small"][name]
        ratio = fig["p99_ms"] / max(small["p99_ms"], 0.001)
        worst = max(worst, fig["p99_ms"])
        flat = flat and ratio <= 1.5
        key = case_key(name)
        results[f"{key}_p50_ms"] = fig["p50_ms"]
        results[f"{key}_p99_ms"] = fig["p99_ms"]
        results[f"{key}_rows"] = fig["results"]
        results[f"{key}_p99_ms_small"] = small["p99_ms"]
        results[f"{key}_ratio_p99"] = ratio
        print(
            f"{name:32s} {fig['p50_ms']:8.1f} {fig['p99_ms']:8.1f} {int(fig['results']):5d} | "
            f"{small['p99_ms']:9.1f} {ratio:8.2f}x"
        )
    results["worst_p99_ms"] = worst
    results["target_met"] = worst < 50 and flat
    print(
        f"\nworst p99 {worst:.1f} ms; target (p99 < 50 ms, within 1.5x): {'met' if results['target_met'] else 'missed'}"
    )
    write_json(args.json, results)


if __name__ == "__main__":
    main()
