"""Send pipeline benchmark: Send → queue → worker → Twilio simulator → status callbacks → SENT.

Starts everything itself on free loopback ports (embedded SecantusDB and Valkey, the simulator with a REST
latency, the webhook bridge, two servers and a worker) and measures, in one run:

  A. the bare sequence: Gateway.send in this process (store writes + event + enqueue; no gRPC, no worker);
  B. the Send path: the same through gRPC Send to a server whose queue no worker reads;
  C. the pipeline: N messages through Send while the worker sends them; Send latency, time to SENT (server
     timestamps: the `sent` history entry minus `created`), end-to-end messages/s; RSS of server and worker.

    .venv/bin/python bench/send_pipeline.py [--messages 2000] [--in-flight 50] [--latency-ms 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: its packages and tests.support

import aiohttp
import grpc
from pymongo import AsyncMongoClient
from redis.asyncio import Redis
from sms.v1 import sms_pb2, sms_pb2_grpc

from server.auth import Caller, Role, mint_token
from server.config import Config, without_settings
from server.delivery_stats import DeliveryStats
from server.embedded import EmbeddedServer, free_port, start_mongo, start_redis
from server.events import EventLog
from server.gateway import Gateway, validate_send
from server.store import Store
from server.worker.queue import SendQueue
from tests.support.identities import bridge_env
from tests.support.launch import start_listening, start_server, start_worker
from tests.support.polling import eventually_async
from tests.support.processes import SMS_GATEWAY, ChildProcess

SECRET = "bench-secret-0123456789-0123456789"
INGEST_SECRET = "bench-ingest-secret-0123456789-0123456789"
ACCOUNT_SID = "AC" + "b" * 32
AUTH_TOKEN = "bench-token"
FROM_NUMBER = "+15005550006"
CONTACTS_PER_USER = 10


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of `values`, nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def run_concurrently(count: int, in_flight: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Runs one(i) for i in range(count) with `in_flight` at a time; returns the elapsed seconds."""
    next_i = iter(range(count))

    async def lane() -> None:
        for i in next_i:
            await one(i)

    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(in_flight)))
    return time.perf_counter() - start


def number(prefix: int, i: int) -> str:
    """A valid US number unique per (prefix, i)."""
    return f"+1{prefix:03d}555{i:04d}"


def target(i: int, area: int) -> tuple[str, str]:
    """The (user, contact number) of message i: users each own CONTACTS_PER_USER contacts."""
    contact = i % 500
    return f"user-{contact // CONTACTS_PER_USER}", number(area, contact)


def start_stores(tmp: Path) -> tuple[EmbeddedServer, EmbeddedServer]:
    """Embedded SecantusDB and Valkey with data under `tmp`, logging beside the other logs."""
    logs = tmp / "logs"
    logs.mkdir(exist_ok=True)
    mongo = start_mongo(tmp / "mongo", 0, open(logs / "mongo.log", "ab"))
    return mongo, start_redis(tmp / "redis", 0, open(logs / "redis.log", "ab"))


async def bench(
    args: argparse.Namespace, tmp: Path, mongo: EmbeddedServer, redis_server: EmbeddedServer
) -> dict[str, Any]:
    logs = tmp / "logs"
    children: list[ChildProcess] = []
    sim_port, bridge_port, idle_port, grpc_port = (free_port() for _ in range(4))
    env = without_settings(os.environ)
    env.update(
        PYTHONUNBUFFERED="1",
        MONGODB_URI=mongo.uri,
        MONGODB_DB="bench",
        REDIS_URL=redis_server.uri,
        SMS_JWT_SECRET=SECRET,
        SMS_INGEST_SECRET=INGEST_SECRET,
        TWILIO_ACCOUNT_SID=ACCOUNT_SID,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        TWILIO_FROM_NUMBER=FROM_NUMBER,
        TWILIO_API_BASE_URL=f"http://127.0.0.1:{sim_port}",
        SMS_SIMULATOR_ADDR=f"127.0.0.1:{sim_port}",
        SMS_BRIDGE_ADDR=f"127.0.0.1:{bridge_port}",
        SMS_PUBLIC_BASE_URL=f"http://127.0.0.1:{bridge_port}",
        SMS_GRPC_TARGET=f"127.0.0.1:{grpc_port}",
        SMS_SIMULATOR_RULES=json.dumps({"latency_ms": args.latency_ms}),
        SMS_ARQ_QUEUE="bench:send",
        SMS_DRAIN_SECONDS="2",
        # The bench measures the pipeline, not the per-user send limit.
        SMS_SEND_RATE_PER_USER="0",
    )
    mongo_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.uri, tz_aware=True)
    redis = Redis.from_url(redis_server.uri)
    result: dict[str, Any] = {
        "messages": args.messages,
        "in_flight": args.in_flight,
        "latency_ms": args.latency_ms,
        "logs": str(logs),
    }
    try:
        # Each start returns once its process is ready, and stops it again if it never gets there.
        sim_args = [*SMS_GATEWAY, "twilio-simulator"]
        children.append(
            await asyncio.to_thread(start_listening, "simulator", sim_args, env, "127.0.0.1", sim_port, log_dir=logs)
        )
        idle_env = {**env, "SMS_ARQ_QUEUE": "bench:idle"}
        idle, _ = await asyncio.to_thread(start_server, idle_env, idle_port, name="server-idle", log_dir=logs)
        children.append(idle)
        server, _ = await asyncio.to_thread(start_server, env, grpc_port, log_dir=logs)
        children.append(server)
        bridge_args = [*SMS_GATEWAY, "bridge"]
        children.append(
            await asyncio.to_thread(
                start_listening, "bridge", bridge_args, bridge_env(env), "127.0.0.1", bridge_port, log_dir=logs
            )
        )
        worker = await start_worker(env, redis, within=60, log_dir=logs)
        children.append(worker)

        # A. The bare sequence, in process, onto a queue nobody reads.
        cfg = Config.from_env(env)
        store = Store.connect(mongo.uri, "bench")
        bare_redis = Redis.from_url(redis_server.uri)
        from arq import create_pool
        from arq.connections import RedisSettings

        arq = await create_pool(RedisSettings.from_dsn(redis_server.uri))
        gateway = Gateway(
            cfg,
            store,
            EventLog(bare_redis, cfg.event_stream, cfg.event_retention),
            SendQueue(arq, "bench:bare"),
            DeliveryStats(bare_redis, "bench:bare:stats:"),
        )

        async def bare(i: int) -> None:
            user, to = target(i, 201)
            req = validate_send(cfg, to, f"bare {i}", [], "", "")
            await gateway.send(Caller(user, Role.AGENT), req)

        await bare(0)  # conversation creation and connections warmed up outside the clock
        bare_s = await run_concurrently(args.bare, args.in_flight, lambda i: bare(i + 1))
        await arq.aclose()
        await bare_redis.aclose()
        await store.close()
        result["bare_per_s"] = args.bare / bare_s

        tokens = {f"user-{u}": mint_token(SECRET, f"user-{u}", "agent") for u in range(500 // CONTACTS_PER_USER)}

        def metadata(user: str) -> tuple[tuple[str, str], ...]:
            return (("authorization", f"Bearer {tokens[user]}"),)

        # B. The Send path: the same writes through gRPC, to the server whose queue no worker reads.
        async with grpc.aio.insecure_channel(f"127.0.0.1:{idle_port}") as channel:
            stub = sms_pb2_grpc.SmsServiceStub(channel)
            path_latency: list[float] = []

            async def via_grpc(i: int) -> None:
                user, to = target(i, 202)
                t0 = time.perf_counter()
                await stub.Send(sms_pb2.SendRequest(to=to, body=f"path {i}"), metadata=metadata(user))
                path_latency.append(time.perf_counter() - t0)

            await via_grpc(0)
            path_latency.clear()
            path_s = await run_concurrently(args.bare, args.in_flight, lambda i: via_grpc(i + 1))
        result["send_path_per_s"] = args.bare / path_s
        result["send_path_ratio"] = result["send_path_per_s"] / result["bare_per_s"]
        result["send_path_p50_ms"] = pct(path_latency, 0.5) * 1000
        result["send_path_p99_ms"] = pct(path_latency, 0.99) * 1000

        # C. The pipeline.
        result["rss_before_mb"] = {"server": server.rss_mib(), "worker": worker.rss_mib()}
        db = mongo_client["bench"]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = sms_pb2_grpc.SmsServiceStub(channel)
            send_latency: list[float] = []

            async def pipeline(i: int) -> None:
                user, to = target(i, 203)
                t0 = time.perf_counter()
                await stub.Send(sms_pb2.SendRequest(to=to, body=f"pipeline {i}"), metadata=metadata(user))
                send_latency.append(time.perf_counter() - t0)

            start = time.perf_counter()
            sends_s = await run_concurrently(args.messages, args.in_flight, pipeline)
            query = {"body": {"$regex": "^pipeline "}, "status_history.status": "sent"}
            await eventually_async(
                lambda: db.messages.count_documents(query),
                max(120.0, args.messages / 10),
                f"all {args.messages} messages to reach SENT",
                until=lambda done: done >= args.messages,
                # Seldom: this count scans the collection under SecantusDB's global lock, slowing the pipeline.
                interval=2.0,
            )
            end_to_end_s = time.perf_counter() - start
        docs = await db.messages.find(query, {"created": 1, "status_history": 1}).to_list()
        to_sent = [
            (next(h["time"] for h in d["status_history"] if h["status"] == "sent") - d["created"]).total_seconds()
            for d in docs
        ]
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{sim_port}/_sim/stats") as resp:
            sims = await resp.json()
        result.update(
            send_per_s=args.messages / sends_s,
            send_p50_ms=pct(send_latency, 0.5) * 1000,
            send_p99_ms=pct(send_latency, 0.99) * 1000,
            end_to_end_per_s=args.messages / end_to_end_s,
            to_sent_p50_ms=pct(to_sent, 0.5) * 1000,
            to_sent_p99_ms=pct(to_sent, 0.99) * 1000,
            to_sent_mean_ms=statistics.fmean(to_sent) * 1000,
            twilio_creates_accepted=sims["creates_accepted"],
            rss_after_mb={"server": server.rss_mib(), "worker": worker.rss_mib()},
        )
        return result
    finally:
        for child in reversed(children):
            child.stop()
        await redis.aclose()
        await mongo_client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages through the pipeline (C)")
    parser.add_argument("--bare", type=int, default=1000, help="messages for the bare and Send-path runs (A, B)")
    parser.add_argument("--in-flight", type=int, default=50, help="Send calls in flight")
    parser.add_argument("--latency-ms", type=int, default=50, help="simulated Twilio REST latency")
    parser.add_argument("--keep", action="store_true", help="keep the databases under the temp dir")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sms-bench-"))
    mongo, redis_server = start_stores(tmp)
    try:
        r = asyncio.run(bench(args, tmp, mongo, redis_server))
    finally:
        redis_server.stop()
        mongo.stop()
        if not args.keep:
            shutil.rmtree(tmp / "mongo", ignore_errors=True)
            shutil.rmtree(tmp / "redis", ignore_errors=True)
    print(f"bare sequence (Gateway.send, {args.in_flight} in flight): {r['bare_per_s']:8.1f} msg/s")
    print(
        f"Send path (gRPC, no worker):          {r['send_path_per_s']:8.1f} msg/s  "
        f"= {r['send_path_ratio']:.2f} x bare   p50 {r['send_path_p50_ms']:.1f} ms  "
        f"p99 {r['send_path_p99_ms']:.1f} ms"
    )
    print(f"pipeline, {r['messages']} messages, Twilio latency {r['latency_ms']} ms:")
    print(
        f"  Send under load:   {r['send_per_s']:8.1f} msg/s   p50 {r['send_p50_ms']:.1f} ms   "
        f"p99 {r['send_p99_ms']:.1f} ms"
    )
    print(
        f"  end to end (SENT): {r['end_to_end_per_s']:8.1f} msg/s   time to SENT p50 {r['to_sent_p50_ms']:.0f} ms"
        f"   p99 {r['to_sent_p99_ms']:.0f} ms"
    )
    print(f"  Twilio creates accepted: {r['twilio_creates_accepted']}")
    b, a = r["rss_before_mb"], r["rss_after_mb"]
    print(f"  RSS server {b['server']:.0f} -> {a['server']:.0f} MiB, worker {b['worker']:.0f} -> {a['worker']:.0f} MiB")
    print(f"  logs: {r['logs']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
