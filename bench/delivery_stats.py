"""Benchmark of GetDeliveryStats and GetQueueStats at two history sizes: their cost must not grow with it.

Starts its own embedded SecantusDB and Valkey, and per size a database and a stack (its own arq queue, hence its
own counter prefix) seeded directly: outbound messages spread over the last 30 days (mostly delivered, some failed
or undelivered with Twilio codes, a small live backlog) bulk-inserted in batches, and their events (queued, sent,
delivered / failed / undelivered with latencies and codes) counted through `DeliveryStats.record_many`. Then
`sms-gateway server` on it answers --calls calls of each RPC; prints p50/p99 per size and the ratio of the large
to the small p99 (target: p99 < 20 ms at both sizes, ratio < 1.5).

    .venv/bin/python bench/delivery_stats.py [--small 10000] [--large 200000] [--calls 200] [--json PATH]
    .venv/bin/python bench/delivery_stats.py --small 1000 --large 5000 --calls 20   # smoke test
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
from bson import ObjectId
from pymongo import AsyncMongoClient, MongoClient
from redis.asyncio import Redis
from sms.v1 import sms_pb2, sms_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: its packages and tests.support

from bench.common import pct, write_json
from server.auth import mint_token
from server.config import without_settings
from server.delivery_stats import DeliveryStats, StatEvent
from server.documents import conversation_id
from server.embedded import start_mongo, start_redis
from server.store import Store
from tests.support.launch import start_server

JWT_SECRET = "bench-jwt-secret-of-at-least-32-bytes"
INGEST_SECRET = "bench-ingest-secret-of-at-least-32-bytes"
OUR_NUMBER = "+15005550006"
SEED_BATCH = 5000
HISTORY = timedelta(days=30)
# Outcomes of the seeded history: (status, error code, weight).
OUTCOMES: list[tuple[str, int, float]] = [
    ("delivered", 0, 0.90),
    ("undelivered", 30003, 0.03),
    ("undelivered", 30005, 0.01),
    ("undelivered", 30007, 0.01),
    ("failed", 30008, 0.02),
    ("failed", 21211, 0.015),
    ("failed", 21610, 0.005),
    ("failed", 30034, 0.01),
]
# A live backlog that stays the same at both sizes: GetQueueStats reads it whole, by design.
BACKLOG = 50


def history(n: int, rng: random.Random, end: datetime) -> Iterator[tuple[dict[str, Any], list[StatEvent]]]:
    """`n` settled outbound messages over the last 30 days, each with the events the gateway would count."""
    statuses = [o[:2] for o in OUTCOMES]
    weights = [o[2] for o in OUTCOMES]
    for i in range(n):
        # Send to delivered: mostly seconds, a long tail to hours; every message settled before now.
        latency = timedelta(seconds=min(rng.lognormvariate(1.5, 1.2), 86400))
        created = end - timedelta(seconds=rng.uniform(latency.total_seconds() + 1, HISTORY.total_seconds()))
        status, code = rng.choices(statuses, weights)[0]
        number = f"+1303{i % 1_000_000:07d}"
        sent_at = created + min(timedelta(seconds=rng.uniform(0.2, 3)), latency)
        finished = created + latency
        doc: dict[str, Any] = {
            "_id": ObjectId(),
            "conversation_id": conversation_id(OUR_NUMBER, number),
            "direction": "outbound",
            "from": OUR_NUMBER,
            "to": number,
            "body": f"bench message {i}",
            "media": [],
            "status": status,
            "status_history": [],
            "owner": "agent1",
            "sender": "agent1",
            "author": "agent1",
            "contact_id": "",
            "attempts": 1,
            "segments": 1,
            "encoding": "GSM-7",
            "twilio_sid": f"SM{uuid.uuid4().hex}",
            "created": created,
            "updated": finished,
            "sent_at": sent_at,
        }
        events = [StatEvent("queued", created)]
        if code:
            doc["error_code"] = code
            doc["error_message"] = "seeded"
        if status == "failed" and code < 30000:
            # Refused by the REST API: never handed over.
            events.append(StatEvent("failed", sent_at, error_code=code))
        else:
            events.append(StatEvent("sent", sent_at))
            if status == "delivered":
                events.append(StatEvent("delivered", finished, latency=latency))
            else:
                events.append(StatEvent(status, finished, error_code=code))
        yield doc, events


def backlog(end: datetime) -> list[dict[str, Any]]:
    """A few messages waiting to be sent, from two senders."""
    docs = []
    for i in range(BACKLOG):
        number = f"+1720{i:07d}"
        docs.append(
            {
                "conversation_id": conversation_id(OUR_NUMBER, number),
                "direction": "outbound",
                "from": OUR_NUMBER if i % 2 else "+15005550007",
                "to": number,
                "body": "waiting",
                "media": [],
                "status": "queued",
                "status_history": [],
                "owner": "agent1",
                "attempts": 0,
                "segments": 1 + i % 3,
                "created": end - timedelta(seconds=i),
                "updated": end - timedelta(seconds=i),
            }
        )
    return docs


async def seed(mongo_uri: str, redis_url: str, db_name: str, prefix: str, n: int, rng: random.Random) -> None:
    """Messages through bulk inserts (sync client: SecantusDB pays mostly per command), counters pipelined."""
    client: MongoClient[dict[str, Any]] = MongoClient(mongo_uri, tz_aware=True)
    redis = Redis.from_url(redis_url)
    stats = DeliveryStats(redis, prefix)
    started = time.perf_counter()
    end = datetime.now(UTC)
    docs: list[dict[str, Any]] = []
    events: list[StatEvent] = []
    done = 0

    async def flush() -> None:
        nonlocal done
        if docs:
            await asyncio.to_thread(client[db_name].messages.insert_many, list(docs), ordered=False)
            await stats.record_many(events)
            done += len(docs)
            docs.clear()
            events.clear()
            print(f"  seeded {done}/{n} in {time.perf_counter() - started:.1f} s", flush=True)

    try:
        for doc, evs in history(n, rng, end):
            docs.append(doc)
            events.extend(evs)
            if len(docs) >= SEED_BATCH:
                await flush()
        await flush()
        client[db_name].messages.insert_many(backlog(end))
        patient: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            mongo_uri, tz_aware=True, connectTimeoutMS=3_600_000
        )
        store = Store(patient, db_name)
        try:
            await store.ensure_indexes()
        finally:
            await store.close()
    finally:
        client.close()
        await redis.aclose()


async def measure(addr: str, calls: int) -> dict[str, dict[str, float]]:
    """p50/p99 in ms of each call, after a few warm-up calls."""
    md = (("authorization", f"Bearer {mint_token(JWT_SECRET, 'admin', 'admin')}"),)
    out: dict[str, dict[str, float]] = {}
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = sms_pb2_grpc.SmsServiceStub(ch)
        long_window = sms_pb2.GetDeliveryStatsRequest()
        long_window.window.FromTimedelta(timedelta(days=30))
        long_window.bucket.FromTimedelta(timedelta(hours=1))
        minutes = sms_pb2.GetDeliveryStatsRequest()
        minutes.window.FromTimedelta(timedelta(days=1))
        minutes.bucket.FromTimedelta(timedelta(minutes=1))
        cases: dict[str, Callable[[], Awaitable[Any]]] = {
            "delivery_stats": lambda: stub.GetDeliveryStats(sms_pb2.GetDeliveryStatsRequest(), metadata=md),
            "queue_stats": lambda: stub.GetQueueStats(sms_pb2.GetQueueStatsRequest(), metadata=md),
            # The heaviest reads the contract allows: 720 hour hashes, 1,440 minute hashes.
            "delivery_stats_30d_hourly": lambda: stub.GetDeliveryStats(long_window, metadata=md),
            "delivery_stats_1d_by_minute": lambda: stub.GetDeliveryStats(minutes, metadata=md),
        }
        for name, call in cases.items():
            for _ in range(5):
                await call()
            times = []
            for _ in range(calls):
                t = time.perf_counter()
                resp = await call()
                times.append((time.perf_counter() - t) * 1000)
            out[name] = {"p50_ms": statistics.median(times), "p99_ms": pct(times, 0.99)}
            if name == "delivery_stats":
                total = sum(b.queued for b in resp.buckets)
                out[name]["queued_in_window"] = float(total)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000, help="messages of the small history")
    parser.add_argument("--large", type=int, default=200_000, help="messages of the large history")
    parser.add_argument("--calls", type=int, default=200, help="calls per RPC and size")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    rng = random.Random(13)
    sizes = {"10k": args.small, "200k": args.large}
    results: dict[str, Any] = {"messages_10k": args.small, "messages_200k": args.large, "calls": args.calls}
    figures: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-delivery-stats-") as tmp:
        mongo = start_mongo(Path(tmp) / "mongo")
        redis_server = start_redis(Path(tmp))
        try:
            for label, n in sizes.items():
                unique = uuid.uuid4().hex[:6]
                db_name, queue = f"bench_stats_{label}_{unique}", f"arq:bench:{label}:{unique}"
                t = time.perf_counter()
                asyncio.run(seed(mongo.uri, redis_server.uri, db_name, f"{queue}:stats:", n, rng))
                print(f"seeded {label}: {n} messages and their counters in {time.perf_counter() - t:.1f} s")
                env = without_settings(os.environ)
                env.update(
                    MONGODB_URI=mongo.uri,
                    MONGODB_DB=db_name,
                    REDIS_URL=redis_server.uri,
                    SMS_ARQ_QUEUE=queue,
                    SMS_EVENT_STREAM=f"sms:events:bench:{unique}",
                    SMS_JWT_SECRET=JWT_SECRET,
                    SMS_INGEST_SECRET=INGEST_SECRET,
                    TWILIO_FROM_NUMBER=OUR_NUMBER,
                )
                proc, addr = start_server(env)
                try:
                    figures[label] = asyncio.run(measure(addr, args.calls))
                finally:
                    proc.stop()
        finally:
            redis_server.stop()
            mongo.stop()
    print(f"\n{'call':30s} {'10k p50':>8s} {'10k p99':>8s} {'200k p50':>9s} {'200k p99':>9s} {'ratio':>6s}")
    met = True
    for name in figures["10k"]:
        small, large = figures["10k"][name], figures["200k"][name]
        ratio = large["p99_ms"] / max(small["p99_ms"], 0.001)
        for label, fig in (("10k", small), ("200k", large)):
            results[f"{name}_p50_ms_{label}"] = round(fig["p50_ms"], 3)
            results[f"{name}_p99_ms_{label}"] = round(fig["p99_ms"], 3)
        results[f"{name}_ratio"] = round(ratio, 3)
        if name in ("delivery_stats", "queue_stats"):
            met = met and small["p99_ms"] < 20 and large["p99_ms"] < 20 and ratio < 1.5
        print(
            f"{name:30s} {small['p50_ms']:8.2f} {small['p99_ms']:8.2f} {large['p50_ms']:9.2f} "
            f"{large['p99_ms']:9.2f} {ratio:5.2f}x"
        )
    results["target_met"] = met
    print(f"\ntarget (p99 < 20 ms at both sizes, ratio < 1.5): {'met' if met else 'missed'}")
    write_json(args.json, results)


if __name__ == "__main__":
    main()
