"""Subscribe fan-out latency: N concurrent subscribers on one replica while Sends flow.

Starts its own embedded SecantusDB and Valkey and one server on free ports, opens the subscribers
(spread over agents, plus some admins with all_owners), sends at a steady rate spread over the agents,
and prints event delivery latency (the event's `time`, stamped just before the XADD, to receipt),
events/s delivered, the server's RSS and CPU, and a bare Redis XADD-to-XREAD baseline measured in the
same run.

    .venv/bin/python bench/subscribe_latency.py --subscribers 1000 --rate 20 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio import Redis
from sms.v1 import sms_pb2, sms_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.auth import mint_token  # noqa: E402
from server.config import without_settings  # noqa: E402
from server.embedded import EmbeddedServer, free_port, start_mongo, start_redis  # noqa: E402

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


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def wait_serving(target: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("server exited during start-up")
            try:
                if (
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                    == health_pb2.HealthCheckResponse.SERVING
                ):
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"{target} not SERVING after {timeout} s")


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
    """The embedded stores and the server this run started, and where they log."""

    tmp: tempfile.TemporaryDirectory[str]
    mongo: EmbeddedServer
    valkey: EmbeddedServer
    server: subprocess.Popen[bytes]
    target: str
    logs: list[IO[bytes]]

    def stop(self) -> None:
        self.server.terminate()
        try:
            self.server.wait(20)
        except subprocess.TimeoutExpired:
            self.server.kill()
        self.valkey.stop()
        self.mongo.stop()
        for f in self.logs:
            f.close()
        self.tmp.cleanup()


def start_stack() -> Stack:
    """Embedded SecantusDB and Valkey on free ports, and one server, SERVING."""
    tmp = tempfile.TemporaryDirectory(prefix="sms-bench-")
    log = open(Path(tmp.name) / "embedded.log", "ab")
    mongo = start_mongo(":memory:", output=log)
    valkey = start_redis(Path(tmp.name) / "redis", output=log)
    target = f"127.0.0.1:{free_port()}"
    env = without_settings(os.environ)
    env.update(
        MONGODB_URI=mongo.uri,
        REDIS_URL=valkey.uri,
        SMS_JWT_SECRET=SECRET,
        SMS_GRPC_ADDR=target,
        TWILIO_FROM_NUMBER="+15005550006",
        SMS_HEARTBEAT_SECONDS="15",
        MONGODB_DB=f"bench_{os.getpid()}",
    )
    server_log = open(Path(tmp.name) / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "server"], env=env, cwd=ROOT, stdout=server_log, stderr=subprocess.STDOUT
    )
    stack = Stack(tmp, mongo, valkey, server, target, [log, server_log])
    try:
        wait_serving(target, server)
    except BaseException:
        stack.stop()
        raise
    return stack


async def run(args: argparse.Namespace, stack: Stack) -> None:
    server, target = stack.server, stack.target
    redis = Redis.from_url(stack.valkey.uri)
    try:
        rss_idle = rss_kib(server.pid)
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
        rss_subscribed = rss_kib(server.pid)

        stop = asyncio.Event()
        sent = [0]
        send_stub = sms_pb2_grpc.SmsServiceStub(channels[0])
        sending = asyncio.create_task(sender(send_stub, agent_tokens, args.rate, stop, sent))
        events_per_send = 2  # MESSAGE_CREATED + CONVERSATION_UPDATED
        base = asyncio.create_task(baseline(redis, args.rate * events_per_send, stop, stats))
        await asyncio.sleep(args.warmup)
        stats.counting = True
        cpu0, t0, sent0 = cpu_seconds(server.pid), time.monotonic(), sent[0]
        client_cpu0 = time.process_time()
        await asyncio.sleep(args.duration)
        stats.counting = False
        elapsed = time.monotonic() - t0
        server_cpu = (cpu_seconds(server.pid) - cpu0) / elapsed
        client_cpu = (time.process_time() - client_cpu0) / elapsed
        sends = sent[0] - sent0
        stop.set()
        await sending
        base_lat = await base
        rss_after = rss_kib(server.pid)
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
            f"server RSS: idle {rss_idle / 1024:.1f} MiB, with subscribers {rss_subscribed / 1024:.1f} MiB, "
            f"after the run {rss_after / 1024:.1f} MiB"
        )
        if args.timeline:
            buckets: dict[int, list[float]] = {}
            for at, ms in zip(stats.received_at, lat, strict=True):
                buckets.setdefault(int(at), []).append(ms)
            print("per second: " + " ".join(f"{max(v):.0f}" for _, v in sorted(buckets.items())))
        print(f"CPU (cores): server {server_cpu:.2f}, bench client {client_cpu:.2f} (of {os.cpu_count()})")
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
    args = parser.parse_args()
    stack = start_stack()
    try:
        asyncio.run(run(args, stack))
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
