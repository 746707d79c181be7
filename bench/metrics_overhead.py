"""What the Prometheus metrics cost the Send path: Sends per second with metrics on vs off, in one run.

Starts embedded SecantusDB and Valkey, and two servers against them: one with SMS_METRICS_ENABLED=true (and its
metrics served on SMS_METRICS_ADDR, scraped once a second during its rounds as Prometheus would), one with
SMS_METRICS_ENABLED=false. No worker reads either queue, so a Send is the gRPC call, the store writes, the event
and the enqueue, as in bench/send_pipeline.py's phase B. The rounds alternate between the two servers (and which
goes first), so a drift of the databases (growing collections, a warming cache) weighs on both alike.

    .venv/bin/python bench/metrics_overhead.py [--messages 2000] [--rounds 4] [--in-flight 50] [--json PATH]

Prints both rates and on/off (the target is >= 0.95).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: its packages and tests.support

import aiohttp
import grpc
from sms.v1 import sms_pb2, sms_pb2_grpc

from bench.common import Meter, run_concurrently, write_json
from bench.send_pipeline import CONTACTS_PER_USER, start_stores, target
from server.auth import mint_token
from server.config import without_settings
from server.embedded import EmbeddedServer, free_port
from tests.support.launch import start_server
from tests.support.processes import ChildProcess

SECRET = "bench-secret-0123456789-0123456789"
INGEST_SECRET = "bench-ingest-secret-0123456789-0123456789"
# Each server's contacts under an area code of its own: the two never write the same conversation.
AREAS = {"on": 301, "off": 302}


@contextlib.asynccontextmanager
async def scraping(url: str, every: float = 1.0) -> AsyncIterator[list[int]]:
    """Scrapes `url` every `every` seconds while the block runs; yields the list of scrape sizes (bytes)."""
    sizes: list[int] = []

    async def loop() -> None:
        async with aiohttp.ClientSession() as http:
            while True:
                async with http.get(url) as resp:
                    sizes.append(len(await resp.read()))
                await asyncio.sleep(every)

    task = asyncio.create_task(loop())
    try:
        yield sizes
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def bench(
    args: argparse.Namespace, tmp: Path, mongo: EmbeddedServer, redis_server: EmbeddedServer
) -> dict[str, Any]:
    logs = tmp / "logs"
    env = without_settings(os.environ)
    env.update(
        PYTHONUNBUFFERED="1",
        MONGODB_URI=mongo.uri,
        MONGODB_DB="bench",
        REDIS_URL=redis_server.uri,
        SMS_JWT_SECRET=SECRET,
        SMS_INGEST_SECRET=INGEST_SECRET,
        TWILIO_FROM_NUMBER="+15005550006",
        SMS_DRAIN_SECONDS="2",
        # The bench measures the Send path, not the per-user send limit.
        SMS_SEND_RATE_PER_USER="0",
    )
    metrics_port = free_port()
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    envs = {
        "on": {
            **env,
            "SMS_ARQ_QUEUE": "bench:on",
            "SMS_METRICS_ENABLED": "true",
            "SMS_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        },
        "off": {**env, "SMS_ARQ_QUEUE": "bench:off", "SMS_METRICS_ENABLED": "false"},
    }
    children: dict[str, ChildProcess] = {}
    cpu = {"on": 0.0, "off": 0.0}
    commands: dict[str, float] = {}  # the "on" server's store commands during its rounds, by operation
    tokens = {f"user-{u}": mint_token(SECRET, f"user-{u}", "agent") for u in range(500 // CONTACTS_PER_USER)}
    per_round = args.messages // args.rounds
    elapsed = {"on": 0.0, "off": 0.0}
    counts = {"on": 0, "off": 0}
    scrape_sizes: list[int] = []
    try:
        addrs: dict[str, str] = {}
        for mode, menv in envs.items():
            children[mode], addrs[mode] = await asyncio.to_thread(
                start_server, menv, name=f"server-{mode}", log_dir=logs
            )
        async with (
            grpc.aio.insecure_channel(addrs["on"]) as on_channel,
            grpc.aio.insecure_channel(addrs["off"]) as off_channel,
        ):
            stubs = {"on": sms_pb2_grpc.SmsServiceStub(on_channel), "off": sms_pb2_grpc.SmsServiceStub(off_channel)}
            sent = {"on": 0, "off": 0}

            async def send(mode: str) -> None:
                i = sent[mode]
                sent[mode] += 1
                user, to = target(i, AREAS[mode])
                md = (("authorization", f"Bearer {tokens[user]}"),)
                await stubs[mode].Send(sms_pb2.SendRequest(to=to, body=f"{mode} {i}"), metadata=md)

            def sender(mode: str) -> Callable[[int], Awaitable[None]]:
                return lambda _i: send(mode)

            # Warm-up, off the clock: connections, conversations of every contact, the servers' first calls.
            for mode in envs:
                await run_concurrently(500, args.in_flight, sender(mode))
            for r in range(args.rounds):
                order = ("on", "off") if r % 2 == 0 else ("off", "on")
                for mode in order:
                    scrape: contextlib.AbstractAsyncContextManager[list[int]] = (
                        scraping(metrics_url) if mode == "on" else contextlib.nullcontext([])
                    )
                    meter = await Meter([children[mode]], {"server": metrics_url} if mode == "on" else {}).start()
                    async with scrape as sizes:
                        elapsed[mode] += await run_concurrently(per_round, args.in_flight, sender(mode))
                    await meter.stop()
                    cpu[mode] += meter.cpu[children[mode].name]
                    for op, n in meter.commands.get("server", {}).items():
                        commands[op] = commands.get(op, 0.0) + n
                    scrape_sizes.extend(sizes)
                    counts[mode] += per_round
        async with aiohttp.ClientSession() as http, http.get(metrics_url) as resp:
            text = await resp.text()
        recorded = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("grpc_server_handled_total{") and 'grpc_method="Send"' in line
        )
    finally:
        for child in reversed(children.values()):
            child.stop()
    on = counts["on"] / elapsed["on"]
    off = counts["off"] / elapsed["off"]
    return {
        "send_per_s_metrics_on": on,
        "send_per_s_metrics_off": off,
        "ratio": on / off,
        "server_cpu_us_per_send_metrics_on": cpu["on"] * 1e6 / counts["on"],
        "server_cpu_us_per_send_metrics_off": cpu["off"] * 1e6 / counts["off"],
        "store_commands_per_send": sum(commands.values()) / counts["on"],
        "store_commands_per_send_by_operation": {
            **{op: n / counts["on"] for op, n in sorted(commands.items()) if n},
            "total": sum(commands.values()) / counts["on"],
        },
        "messages_per_mode": counts["on"],
        "rounds": args.rounds,
        "in_flight": args.in_flight,
        "sends_recorded_by_metrics": recorded,
        "scrapes": len(scrape_sizes),
        "scrape_bytes": max(scrape_sizes, default=0),
        "logs": str(logs),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000, help="Sends per server, over all rounds")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds per server")
    parser.add_argument("--in-flight", type=int, default=50, help="Send calls in flight")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sms-bench-metrics-"))
    (tmp / "logs").mkdir(exist_ok=True)
    mongo, redis_server = start_stores(tmp)
    started = time.perf_counter()
    try:
        r = asyncio.run(bench(args, tmp, mongo, redis_server))
    finally:
        redis_server.stop()
        mongo.stop()
        shutil.rmtree(tmp / "mongo", ignore_errors=True)
        shutil.rmtree(tmp / "redis", ignore_errors=True)
    print(
        f"Send path, {r['messages_per_mode']} Sends per server in {r['rounds']} alternating rounds, "
        f"{r['in_flight']} in flight ({time.perf_counter() - started:.0f} s in all)"
    )
    print(
        f"  metrics on:  {r['send_per_s_metrics_on']:8.1f} Sends/s   (served and scraped {r['scrapes']} times, "
        f"{r['scrape_bytes']} bytes; {r['sends_recorded_by_metrics']:.0f} Sends recorded)"
    )
    print(f"  metrics off: {r['send_per_s_metrics_off']:8.1f} Sends/s")
    print(f"  on / off:    {r['ratio']:8.3f}   (target >= 0.95)")
    print(
        f"  server CPU per Send: {r['server_cpu_us_per_send_metrics_on']:.0f} us on, "
        f"{r['server_cpu_us_per_send_metrics_off']:.0f} us off; store commands per Send "
        + ", ".join(f"{op} {n:.2f}" for op, n in r["store_commands_per_send_by_operation"].items())
    )
    print(f"  logs: {r['logs']}")
    write_json(args.json, {k: v for k, v in r.items() if k != "logs"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
