"""Subscribe fan-out latency: N concurrent subscribers on one replica while Sends flow.

Starts its own embedded SecantusDB and Valkey and one server on free ports, opens the subscribers
(spread over agents, plus some admins with all_owners), sends at a steady rate spread over the agents,
and prints event delivery latency (the event's `time`, stamped just before the XADD, to receipt),
events/s delivered, the server's RSS and CPU, and a bare Redis XADD-to-XREAD baseline measured in the
same run.

    .venv/bin/python bench/subscribe_latency.py --subscribers 1000 --rate 20 --duration 30 [--json PATH]
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
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from redis.asyncio import Redis
from sms.v1 import sms_pb2, sms_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: its packages and tests.support

from bench.common import pct, write_json
from server.auth import mint_token
from server.config import without_settings
from server.embedded import EmbeddedServer, start_mongo, start_redis
from tests.support.launch import start_server
from tests.support.processes import ChildProcess

SECRET = "bench-secret-not-for-production-0123456789"
BASELINE_STREAM = "bench:baseline"


@dataclass
class Stats:
    """Deliveries seen by the subscribers, after the warm-up."""

    latencies: list[float] = field(default_factory=list)
    received_at: list[float] = field(default_factory=list)
    delivered: int = 0
    resyncs: int = 0
    errors: int = 0
    counting: bool = False


async def subscriber(
    stub: sms_pb2_grpc.SmsServiceAsyncStub,
    token: str,
    all_owners: bool,
    stats: Stats,
    ready: asyncio.Event,
    opened: list[int],
    total: int,
) -> None:
    call = stub.Subscribe(
        sms_pb2.SubscribeRequest(all_owners=all_owners), metadata=(("authorization", f"Bearer {token}"),)
    )
    first = True
    try:
        async for response in call:
            if first:
                first = False
                opened[0] += 1
                if opened[0] == total:
                    ready.set()
            kind = response.WhichOneof("response")
            if kind == "event":
                if stats.counting:
                    t = response.event.time
                    now = time.time()
                    stats.latencies.append(now - (t.seconds + t.nanos / 1e9))
                    stats.received_at.append(now)
                    stats.delivered += 1
            elif kind == "resync_required":
                stats.resyncs += 1
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:
            stats.errors += 1


async def sender(
    stub: sms_pb2_grpc.SmsServiceAsyncStub, tokens: list[str], rate: float, stop: asyncio.Event, sent: list[int]
) -> None:
    numbers = [f"+1415{random.randint(2000000, 9999999)}" for _ in tokens]
    interval = 1 / rate
    next_at = time.monotonic()
    pending: set[asyncio.Task[None]] = set()

    async def one(i: int) -> None:
        agent = i % len(tokens)
        await stub.Send(
            sms_pb2.SendRequest(to=numbers[agent], body=f"bench {i}"),
            metadata=(("authorization", f"Bearer {tokens[agent]}"),),
        )
        sent[0] += 1

    i = 0
    while not stop.is_set():
        task = asyncio.create_task(one(i))
        pending.add(task)
        task.add_done_callback(pending.discard)
        i += 1
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await asyncio.gather(*pending, return_exceptions=True)


async def baseline(redis: Redis, rate: float, stop: asyncio.Event, counting: Stats) -> list[float]:
    """Bare Redis: XADD (payload of an event's size) to XREAD BLOCK receipt, at the same rate."""
    latencies: list[float] = []
    await redis.delete(BASELINE_STREAM)

    async def reader() -> None:
        last = "$"
        while not stop.is_set():
            reply = await redis.xread({BASELINE_STREAM: last}, block=500, count=100)
            now = time.time()
            for _, entries in reply or ():
                for entry_id, fields in entries:
                    last = entry_id
                    if counting.counting:
                        latencies.append(now - float(fields[b"t"]))

    task = asyncio.create_task(reader())
    interval = 1 / rate
    next_at = time.monotonic()
    payload = b"x" * 400
    while not stop.is_set():
        await redis.xadd(BASELINE_STREAM, {"t": repr(time.time()), "data": payload}, maxlen=10_000, approximate=True)
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await task
    return latencies


@dataclass
class Stack:
    """The embedded stores and the server this run started; `stop` ends them and removes their temp dir."""

    valkey: EmbeddedServer
    server: ChildProcess
    target: str
    cleanup: ExitStack

    def stop(self) -> None:
        self.cleanup.close()


def start_stack() -> Stack:
    """Embedded SecantusDB and Valkey on free ports, and one server, SERVING."""
    with ExitStack() as cleanup:  # unwinds what was started if a later start fails
        tmp = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="sms-bench-")))
        log = cleanup.enter_context(open(tmp / "embedded.log", "ab"))
        mongo = start_mongo(":memory:", output=log)
        cleanup.callback(mongo.stop)
        valkey = start_redis(tmp / "redis", output=log)
        cleanup.callback(valkey.stop)
        env = without_settings(os.environ)
        env.update(
            MONGODB_URI=mongo.uri,
            REDIS_URL=valkey.uri,
            SMS_JWT_SECRET=SECRET,
            TWILIO_FROM_NUMBER="+15005550006",
            SMS_HEARTBEAT_SECONDS="15",
            MONGODB_DB=f"bench_{os.getpid()}",
            # The bench opens many streams per user and sends as fast as it can: no per-user limits.
            SMS_MAX_STREAMS_PER_USER="100000",
            SMS_SEND_RATE_PER_USER="0",
        )
        server, target = start_server(env, within=60, log_dir=tmp)
        cleanup.callback(server.stop, timeout=20)
        return Stack(valkey, server, target, cleanup.pop_all())


async def run(args: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    server, target = stack.server, stack.target
    redis = Redis.from_url(stack.valkey.uri)
    try:
        rss_idle = server.rss_mib()
        agents = [f"agent-{i}" for i in range(args.agents)]
        agent_tokens = [mint_token(SECRET, a, "agent") for a in agents]
        admin_token = mint_token(SECRET, "admin-0", "admin")
        n_admins = int(args.subscribers * args.admin_share)
        channels = [grpc.aio.insecure_channel(target) for _ in range(args.channels)]
        stubs = [sms_pb2_grpc.SmsServiceStub(ch) for ch in channels]
        stats = Stats()
        ready = asyncio.Event()
        opened = [0]
        subs = []
        for i in range(args.subscribers):
            admin = i < n_admins
            tok = admin_token if admin else agent_tokens[i % args.agents]
            subs.append(
                asyncio.create_task(
                    subscriber(stubs[i % len(stubs)], tok, admin, stats, ready, opened, args.subscribers)
                )
            )
        t_open = time.monotonic()
        await asyncio.wait_for(ready.wait(), 120)
        open_seconds = time.monotonic() - t_open
        rss_subscribed = server.rss_mib()

        stop = asyncio.Event()
        sent = [0]
        send_stub = sms_pb2_grpc.SmsServiceStub(channels[0])
        sending = asyncio.create_task(sender(send_stub, agent_tokens, args.rate, stop, sent))
        events_per_send = 2  # MESSAGE_CREATED + CONVERSATION_UPDATED
        base = asyncio.create_task(baseline(redis, args.rate * events_per_send, stop, stats))
        await asyncio.sleep(args.warmup)
        stats.counting = True
        cpu0, t0, sent0 = server.cpu_seconds(), time.monotonic(), sent[0]
        client_cpu0 = time.process_time()
        await asyncio.sleep(args.duration)
        stats.counting = False
        elapsed = time.monotonic() - t0
        server_cpu = (server.cpu_seconds() - cpu0) / elapsed
        client_cpu = (time.process_time() - client_cpu0) / elapsed
        sends = sent[0] - sent0
        stop.set()
        await sending
        base_lat = await base
        rss_after = server.rss_mib()
        for t in subs:
            t.cancel()
        await asyncio.gather(*subs, return_exceptions=True)
        for ch in channels:
            await ch.close()

        lat = [x * 1000 for x in stats.latencies]
        blat = [x * 1000 for x in base_lat]
        per_event = args.subscribers - n_admins
        print(
            f"subscribers: {args.subscribers} ({n_admins} admins with all_owners, {per_event} agents over "
            f"{args.agents} agents; {args.channels} client connections), opened in {open_seconds:.1f} s"
        )
        print(
            f"load: {sends / elapsed:.1f} Sends/s for {elapsed:.0f} s -> {sends * events_per_send / elapsed:.0f} "
            f"events/s appended, each to ~{n_admins + per_event / args.agents:.0f} subscribers"
        )
        print(
            f"delivered: {stats.delivered} events ({stats.delivered / elapsed:.0f}/s); resyncs {stats.resyncs}, "
            f"stream errors {stats.errors}"
        )
        print(
            f"delivery latency (event time -> receipt, ms; time has ms precision): p50 {pct(lat, 0.5):.1f}  "
            f"p99 {pct(lat, 0.99):.1f}  max {max(lat, default=float('nan')):.1f}  "
            f"mean {statistics.fmean(lat) if lat else float('nan'):.1f}"
        )
        print(
            f"baseline bare Redis XADD -> XREAD (ms): p50 {pct(blat, 0.5):.2f}  p99 {pct(blat, 0.99):.2f}  "
            f"max {max(blat, default=float('nan')):.2f}  ({len(blat)} entries)"
        )
        if blat and lat:
            print(
                f"ratio p50 {pct(lat, 0.5) / max(pct(blat, 0.5), 1e-3):.0f}x, "
                f"p99 {pct(lat, 0.99) / max(pct(blat, 0.99), 1e-3):.0f}x"
            )
        print(
            f"server RSS: idle {rss_idle:.1f} MiB, with subscribers {rss_subscribed:.1f} MiB, "
            f"after the run {rss_after:.1f} MiB"
        )
        if args.timeline:
            buckets: dict[int, list[float]] = {}
            for at, ms in zip(stats.received_at, lat, strict=True):
                buckets.setdefault(int(at), []).append(ms)
            print("per second: " + " ".join(f"{max(v):.0f}" for _, v in sorted(buckets.items())))
        print(f"CPU (cores): server {server_cpu:.2f}, bench client {client_cpu:.2f} (of {os.cpu_count()})")
        deliveries = stats.delivered
        us_per_delivery = server_cpu * elapsed * 1e6 / deliveries if deliveries else float("nan")
        print(f"server CPU per delivery: {us_per_delivery:.0f} us")
        return {
            "subscribers": args.subscribers,
            "admins": n_admins,
            "open_seconds": open_seconds,
            "sends_per_s": sends / elapsed,
            "events_appended_per_s": sends * events_per_send / elapsed,
            "delivered": deliveries,
            "delivered_per_s": deliveries / elapsed,
            "resyncs": stats.resyncs,
            "stream_errors": stats.errors,
            "latency_p50_ms": pct(lat, 0.5),
            "latency_p99_ms": pct(lat, 0.99),
            "latency_max_ms": max(lat, default=float("nan")),
            "latency_mean_ms": statistics.fmean(lat) if lat else float("nan"),
            "baseline_p50_ms": pct(blat, 0.5),
            "baseline_p99_ms": pct(blat, 0.99),
            "ratio_p50": pct(lat, 0.5) / max(pct(blat, 0.5), 1e-3) if blat and lat else float("nan"),
            "ratio_p99": pct(lat, 0.99) / max(pct(blat, 0.99), 1e-3) if blat and lat else float("nan"),
            "server_rss_idle_mib": rss_idle,
            "server_rss_subscribed_mib": rss_subscribed,
            "server_rss_after_mib": rss_after,
            "server_cpu_cores": server_cpu,
            "client_cpu_cores": client_cpu,
            "server_cpu_us_per_delivery": us_per_delivery,
        }
    finally:
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=50, help="agents the subscribers and Sends are spread over")
    parser.add_argument("--admin-share", type=float, default=0.1, help="fraction of subscribers that are admins")
    parser.add_argument("--rate", type=float, default=20.0, help="Sends per second")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--timeline", action="store_true", help="print the worst latency of each second")
    parser.add_argument("--channels", type=int, default=8, help="client connections the subscribers share")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    stack = start_stack()
    try:
        figures = asyncio.run(run(args, stack))
    finally:
        stack.stop()
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
