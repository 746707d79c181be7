"""Send pipeline benchmark: Send → queue → worker → Twilio simulator → status callbacks → SENT.

Starts everything itself on free loopback ports (embedded SecantusDB and Valkey, the simulator with a REST
latency, the webhook bridge, two servers and a worker) and measures, in one run:

  A. the bare sequence: Gateway.send in this process (store writes + event + enqueue; no gRPC, no worker);
  B. the Send path: the same through gRPC Send to a server whose queue no worker reads;
  C. the pipeline: N messages through Send while the worker sends them; Send latency, time to SENT (server
     timestamps: the `sent` history entry minus `created`), end-to-end messages/s; RSS of server and worker.

Per process it meters CPU (server per Send in B; server, worker, bridge per message in C) and store round trips
(PyMongo's command monitoring, `sms_store_commands_total` scraped from each process's metrics endpoint) by stage:
the server's Send and status callbacks, the worker's send jobs.

`--also 500,10000` runs C again on a fresh stack at each of those sizes and prints each rate against the main
run's (the pipeline's rate should not fall as the backlog grows).

    .venv/bin/python bench/send_pipeline.py [--messages 2000] [--also 500,10000] [--in-flight 50]
        [--latency-ms 50] [--json PATH]
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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: its packages and tests.support

import aiohttp
import grpc
from pymongo import AsyncMongoClient
from redis.asyncio import Redis
from sms.v1 import sms_pb2, sms_pb2_grpc

from bench.common import Meter, pct, run_concurrently, write_json
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


def env_for(args: argparse.Namespace, mongo: EmbeddedServer, redis_server: EmbeddedServer) -> dict[str, str]:
    """The environment every process of the bench shares; each gets its own SMS_METRICS_ADDR on top."""
    sim_port, bridge_port, grpc_port = (free_port() for _ in range(3))
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
    return env


def with_metrics(env: dict[str, str]) -> tuple[dict[str, str], str]:
    """`env` with a metrics port of its own, and that endpoint's URL."""
    addr = f"127.0.0.1:{free_port()}"
    return {**env, "SMS_METRICS_ADDR": addr}, f"http://{addr}/metrics"


def tokens_of_users() -> dict[str, str]:
    return {f"user-{u}": mint_token(SECRET, f"user-{u}", "agent") for u in range(500 // CONTACTS_PER_USER)}


async def bare_and_path(
    args: argparse.Namespace, env: dict[str, str], mongo: EmbeddedServer, redis_server: EmbeddedServer, logs: Path
) -> dict[str, Any]:
    """A: the bare sequence in this process; B: the Send path through a server whose queue nobody reads."""
    result: dict[str, Any] = {}
    idle_env, idle_metrics = with_metrics({**env, "SMS_ARQ_QUEUE": "bench:idle"})
    idle, idle_addr = await asyncio.to_thread(start_server, idle_env, name="server-idle", log_dir=logs)
    try:
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

        tokens = tokens_of_users()
        async with grpc.aio.insecure_channel(idle_addr) as channel:
            stub = sms_pb2_grpc.SmsServiceStub(channel)
            path_latency: list[float] = []

            async def via_grpc(i: int) -> None:
                user, to = target(i, 202)
                t0 = time.perf_counter()
                await stub.Send(
                    sms_pb2.SendRequest(to=to, body=f"path {i}"),
                    metadata=(("authorization", f"Bearer {tokens[user]}"),),
                )
                path_latency.append(time.perf_counter() - t0)

            await via_grpc(0)
            path_latency.clear()
            meter = await Meter([idle], {"server": idle_metrics}).start()
            path_s = await run_concurrently(args.bare, args.in_flight, lambda i: via_grpc(i + 1))
            await meter.stop()
        result["send_path_per_s"] = args.bare / path_s
        result["send_path_ratio"] = result["send_path_per_s"] / result["bare_per_s"]
        result["send_path_p50_ms"] = pct(path_latency, 0.5) * 1000
        result["send_path_p99_ms"] = pct(path_latency, 0.99) * 1000
        result["server_cpu_us_per_send"] = meter.cpu_us_per("server-idle", args.bare)
        result["store_commands_per_send"] = meter.commands_per(args.bare)["total"]
        return result
    finally:
        idle.stop()


async def count_reached_sent(db: Any, since: Any) -> int:
    """Messages created since `since` that reached SENT (now SENT or DELIVERED): two indexed counts, since
    SecantusDB serves no `$in` from an index and a scan would slow the pipeline it measures."""
    return sum(
        [await db.messages.count_documents({"status": s, "created": {"$gte": since}}) for s in ("sent", "delivered")]
    )


async def pipeline(
    args: argparse.Namespace, messages: int, env: dict[str, str], redis_server: EmbeddedServer, logs: Path, db: Any
) -> dict[str, Any]:
    """C: `messages` Sends while the worker sends them and the simulator's callbacks come back."""
    children: list[ChildProcess] = []
    try:
        sim_args = [*SMS_GATEWAY, "twilio-simulator"]
        sim_host, sim_port = env["SMS_SIMULATOR_ADDR"].rsplit(":", 1)
        children.append(
            await asyncio.to_thread(start_listening, "simulator", sim_args, env, sim_host, int(sim_port), log_dir=logs)
        )
        server_env, server_metrics = with_metrics(env)
        grpc_port = int(env["SMS_GRPC_TARGET"].rsplit(":", 1)[1])
        server, _ = await asyncio.to_thread(start_server, server_env, grpc_port, log_dir=logs)
        children.append(server)
        bridge_host, bridge_port = env["SMS_BRIDGE_ADDR"].rsplit(":", 1)
        bridge_env_, _ = with_metrics(bridge_env(env))
        bridge = await asyncio.to_thread(
            start_listening,
            "bridge",
            [*SMS_GATEWAY, "bridge"],
            bridge_env_,
            bridge_host,
            int(bridge_port),
            log_dir=logs,
        )
        children.append(bridge)
        worker_env, worker_metrics = with_metrics(env)
        redis = Redis.from_url(redis_server.uri)
        try:
            worker = await start_worker(worker_env, redis, within=60, log_dir=logs)
        finally:
            await redis.aclose()
        children.append(worker)

        tokens = tokens_of_users()
        rss_before = {"server": server.rss_mib(), "worker": worker.rss_mib()}
        rss_peak = dict(rss_before)
        async with grpc.aio.insecure_channel(env["SMS_GRPC_TARGET"]) as channel:
            stub = sms_pb2_grpc.SmsServiceStub(channel)
            send_latency: list[float] = []

            async def one(i: int) -> None:
                user, to = target(i, 203)
                t0 = time.perf_counter()
                await stub.Send(
                    sms_pb2.SendRequest(to=to, body=f"pipeline {i}"),
                    metadata=(("authorization", f"Bearer {tokens[user]}"),),
                )
                send_latency.append(time.perf_counter() - t0)

            await one(messages)  # the first call's connection and conversation outside the clock
            send_latency.clear()
            since = (await db.messages.find_one({"body": f"pipeline {messages}"}))["created"]
            meter = await Meter(children, {"server": server_metrics, "worker": worker_metrics}).start()
            start = time.perf_counter()
            sends_s = await run_concurrently(messages, args.in_flight, one)

            async def reached() -> int:
                for name, proc in (("server", server), ("worker", worker)):
                    rss_peak[name] = max(rss_peak[name], proc.rss_mib())
                return await count_reached_sent(db, since)

            await eventually_async(
                reached,
                max(120.0, messages / 5),
                f"all {messages} messages to reach SENT",
                until=lambda done: done >= messages + 1,
                interval=1.0,
            )
            end_to_end_s = time.perf_counter() - start
            await meter.stop()
        query = {"body": {"$regex": "^pipeline "}, "status_history.status": "sent"}
        docs = await db.messages.find(query, {"created": 1, "status_history": 1}).to_list()
        to_sent = [
            (next(h["time"] for h in d["status_history"] if h["status"] == "sent") - d["created"]).total_seconds()
            for d in docs
        ]
        sim_url = f"http://{env['SMS_SIMULATOR_ADDR']}/_sim/stats"
        async with aiohttp.ClientSession() as http, http.get(sim_url) as resp:
            sims = await resp.json()
        commands = meter.commands_per(messages)
        return {
            "messages": messages,
            "send_per_s": messages / sends_s,
            "send_p50_ms": pct(send_latency, 0.5) * 1000,
            "send_p99_ms": pct(send_latency, 0.99) * 1000,
            "end_to_end_per_s": messages / end_to_end_s,
            "to_sent_p50_ms": pct(to_sent, 0.5) * 1000,
            "to_sent_p99_ms": pct(to_sent, 0.99) * 1000,
            "to_sent_mean_ms": statistics.fmean(to_sent) * 1000,
            "twilio_creates_accepted": sims["creates_accepted"],
            "store_commands_per_message": commands["total"],
            "store_commands_by_stage": commands,
            "server_cpu_us_per_message": meter.cpu_us_per("server", messages),
            "worker_cpu_us_per_message": meter.cpu_us_per("worker", messages),
            "bridge_cpu_us_per_message": meter.cpu_us_per("bridge", messages),
            "simulator_cpu_us_per_message": meter.cpu_us_per("simulator", messages),
            "rss_before_mib": rss_before,
            "rss_peak_mib": rss_peak,
            "rss_after_mib": {"server": server.rss_mib(), "worker": worker.rss_mib()},
        }
    finally:
        for child in reversed(children):
            child.stop()


async def run_size(args: argparse.Namespace, messages: int, with_baselines: bool) -> dict[str, Any]:
    """One fresh stack (stores, processes): the baselines A and B when asked, then the pipeline C."""
    tmp = Path(tempfile.mkdtemp(prefix="sms-bench-"))
    mongo, redis_server = start_stores(tmp)
    logs = tmp / "logs"
    mongo_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo.uri, tz_aware=True)
    try:
        env = env_for(args, mongo, redis_server)
        result: dict[str, Any] = {"logs": str(logs)}
        if with_baselines:
            result.update(await bare_and_path(args, env, mongo, redis_server, logs))
        result.update(await pipeline(args, messages, env, redis_server, logs, mongo_client["bench"]))
        return result
    finally:
        await mongo_client.close()
        redis_server.stop()
        mongo.stop()
        if not args.keep:
            shutil.rmtree(tmp / "mongo", ignore_errors=True)
            shutil.rmtree(tmp / "redis", ignore_errors=True)


def print_pipeline(r: dict[str, Any], latency_ms: int) -> None:
    print(f"pipeline, {r['messages']} messages, Twilio latency {latency_ms} ms:")
    print(
        f"  Send under load:   {r['send_per_s']:8.1f} msg/s   p50 {r['send_p50_ms']:.1f} ms   "
        f"p99 {r['send_p99_ms']:.1f} ms"
    )
    print(
        f"  end to end (SENT): {r['end_to_end_per_s']:8.1f} msg/s   time to SENT p50 {r['to_sent_p50_ms']:.0f} ms"
        f"   p99 {r['to_sent_p99_ms']:.0f} ms"
    )
    print(f"  Twilio creates accepted: {r['twilio_creates_accepted']}")
    stages = ", ".join(f"{k} {v:.2f}" for k, v in sorted(r["store_commands_by_stage"].items()) if k != "total")
    print(f"  store commands per message: {r['store_commands_per_message']:.2f} ({stages})")
    print(
        "  CPU per message: server {:.0f} us, worker {:.0f} us, bridge {:.0f} us, simulator {:.0f} us".format(
            r["server_cpu_us_per_message"],
            r["worker_cpu_us_per_message"],
            r["bridge_cpu_us_per_message"],
            r["simulator_cpu_us_per_message"],
        )
    )
    b, p, a = r["rss_before_mib"], r["rss_peak_mib"], r["rss_after_mib"]
    print(
        f"  RSS server {b['server']:.0f} -> peak {p['server']:.0f} -> {a['server']:.0f} MiB, "
        f"worker {b['worker']:.0f} -> peak {p['worker']:.0f} -> {a['worker']:.0f} MiB"
    )
    print(f"  logs: {r['logs']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages through the pipeline (C)")
    parser.add_argument("--also", default="", help="more pipeline sizes, each on a fresh stack (e.g. 500,10000)")
    parser.add_argument("--bare", type=int, default=1000, help="messages for the bare and Send-path runs (A, B)")
    parser.add_argument("--in-flight", type=int, default=50, help="Send calls in flight")
    parser.add_argument("--latency-ms", type=int, default=50, help="simulated Twilio REST latency")
    parser.add_argument("--keep", action="store_true", help="keep the databases under the temp dir")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    r = asyncio.run(run_size(args, args.messages, with_baselines=True))
    print(f"bare sequence (Gateway.send, {args.in_flight} in flight): {r['bare_per_s']:8.1f} msg/s")
    print(
        f"Send path (gRPC, no worker):          {r['send_path_per_s']:8.1f} msg/s  "
        f"= {r['send_path_ratio']:.2f} x bare   p50 {r['send_path_p50_ms']:.1f} ms  "
        f"p99 {r['send_path_p99_ms']:.1f} ms"
    )
    print(
        f"  server CPU per Send {r['server_cpu_us_per_send']:.0f} us, "
        f"store commands per Send {r['store_commands_per_send']:.2f}"
    )
    print_pipeline(r, args.latency_ms)
    figures: dict[str, Any] = {k: v for k, v in r.items() if k != "logs"}
    sizes = [int(n) for n in args.also.split(",") if n.strip()]
    by_size = {str(args.messages): {k: r[k] for k in ("end_to_end_per_s", "send_p99_ms", "to_sent_p99_ms")}}
    for n in sizes:
        other = asyncio.run(run_size(args, n, with_baselines=False))
        print_pipeline(other, args.latency_ms)
        by_size[str(n)] = {k: other[k] for k in ("end_to_end_per_s", "send_p99_ms", "to_sent_p99_ms")}
        by_size[str(n)]["rss_peak_mib"] = other["rss_peak_mib"]
        by_size[str(n)]["rss_after_mib"] = other["rss_after_mib"]
    if sizes:
        rates = {n: v["end_to_end_per_s"] for n, v in by_size.items()}
        figures["flat_ratio"] = min(rates.values()) / max(rates.values())
        print(
            "end to end by size: "
            + ", ".join(f"{n}: {rate:.1f} msg/s ({rate / r['end_to_end_per_s']:.2f}x)" for n, rate in rates.items())
            + f"; slowest/fastest {figures['flat_ratio']:.2f}"
        )
    figures["by_size"] = by_size
    write_json(args.json, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
