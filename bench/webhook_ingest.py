"""Benchmark of the webhook bridge: signed Twilio posts at a fixed concurrency, against a signature-only baseline.

Starts everything itself on free loopback ports: embedded SecantusDB and Valkey, `sms-gateway server`,
`sms-gateway bridge`, and a baseline aiohttp process that only verifies the signature and answers 200.
Then, for each target in turn, keeps `--concurrency` posts in flight for `--duration` seconds (after a
warm-up) and prints posts/s and ack latency p50/p99, and the bridge/baseline rate ratio. Over each measured
window it also meters (bench/common.Meter) the CPU of the processes involved and the server's store commands
(`sms_store_commands_total` on its SMS_METRICS_ADDR), per post acknowledged within the window, and checks that
every inbound post the bridge acknowledged was stored.

    .venv/bin/python bench/webhook_ingest.py [--concurrency|--in-flight 50] [--duration 10]
        [--route inbound|status] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import grpc
from aiohttp import web
from bson import ObjectId
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from pymongo import MongoClient
from sms.v1 import ingest_pb2, ingest_pb2_grpc, sms_pb2, sms_pb2_grpc
from twilio.request_validator import RequestValidator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: its packages and tests.support

from bench.common import Meter, pct, write_json
from server.auth import mint_token
from server.config import without_settings
from server.embedded import free_port, start_mongo, start_redis
from tests.support.identities import bridge_env
from tests.support.launch import start_grpc, start_listening, start_server
from tests.support.processes import SMS_GATEWAY, ChildProcess
from webhook_bridge.forms import inbound_request, parse_form, status_request
from webhook_bridge.signature import SIGNATURE_HEADER, SignatureVerifier, Verdict

AUTH_TOKEN = "bench-auth-token"
JWT_SECRET = "bench-jwt-secret-of-at-least-32-bytes"
INGEST_SECRET = "bench-ingest-secret-of-at-least-32-bytes"
PUBLIC_BASE = "https://sms.bench.test"
OUR_NUMBER = "+15005550006"
THIS_SCRIPT = [sys.executable, str(Path(__file__).resolve())]  # re-run as the baseline or the no-op ingest server


# ---------------------------------------------------------------------------------------------------------
# The baseline: what an aiohttp handler costs when it does nothing but parse and verify


def run_baseline(port: int) -> None:
    """Serves POST on any path: parse the form, verify the signature, answer 200 (or 403)."""
    verifier = SignatureVerifier(AUTH_TOKEN, PUBLIC_BASE)

    async def handle(request: web.Request) -> web.Response:
        form = parse_form(await request.read())
        verdict = verifier.verify(request.raw_path, form, request.headers.get(SIGNATURE_HEADER))
        return web.Response(status=200 if verdict is Verdict.VALID else 403)

    app = web.Application(client_max_size=64 * 1024)
    app.router.add_post("/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def run_noop_ingest(port: int) -> None:
    """A gRPC server whose SmsIngestService stores nothing and answers at once: the bridge's own ceiling."""

    class Noop(ingest_pb2_grpc.SmsIngestServiceServicer):
        async def RecordInbound(
            self, request: ingest_pb2.RecordInboundRequest, context: Any
        ) -> ingest_pb2.RecordInboundResponse:
            return ingest_pb2.RecordInboundResponse()

        async def RecordStatus(
            self, request: ingest_pb2.RecordStatusRequest, context: Any
        ) -> ingest_pb2.RecordStatusResponse:
            return ingest_pb2.RecordStatusResponse(applied=True)

    async def serve() -> None:
        server = grpc.aio.server()
        ingest_pb2_grpc.add_SmsIngestServiceServicer_to_server(Noop(), server)
        health = HealthServicer()
        await health.set("sms.v1.SmsIngestService", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(serve())


# ---------------------------------------------------------------------------------------------------------
# Processes


def stopped_with(stack: ExitStack, proc: ChildProcess) -> ChildProcess:
    """Has `proc` stopped when `stack` closes, saying where its log is if it did not exit cleanly."""

    def stop() -> None:
        code = proc.stop()
        if code not in (0, -signal.SIGTERM):
            print(f"{proc.name} exited with {code}; log: {proc.log_path}", file=sys.stderr)

    stack.callback(stop)
    return proc


# ---------------------------------------------------------------------------------------------------------
# Load


@dataclass
class Result:
    """One target's measured run: acks of posts started after the warm-up, and the meter over that window."""

    name: str
    seconds: float
    process: str  # the ChildProcess name of the target whose CPU is "cpu/post"
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    internal_ms: float | None = None
    acked_sids: list[str] = field(default_factory=list)  # every acknowledged post, warm-up included
    acked_at: list[float] = field(default_factory=list)  # monotonic time of each ack, warm-up included
    meter: Meter | None = None
    window: tuple[float, float] = (0.0, 0.0)  # monotonic bounds of the meter's window

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def pct(self, q: float) -> float:
        """The q-quantile of the ack latencies, in ms."""
        return pct(self.latencies, q) * 1000

    @property
    def acks_in_window(self) -> int:
        """Posts acknowledged while the meter ran: what its CPU and store commands are divided by."""
        start, stop = self.window
        return sum(1 for t in self.acked_at if start <= t < stop)

    def cpu_us_per_post(self, process: str | None = None) -> float:
        """Microseconds of `process`'s (default: the target's) CPU per post acknowledged in the window."""
        if self.meter is None:
            return float("nan")
        return self.meter.cpu_us_per(process or self.process, self.acks_in_window)

    def commands_per_post(self) -> dict[str, float]:
        """The server's store commands per post acknowledged in the window, by operation, and their total."""
        if self.meter is None or not self.acks_in_window:
            return {}
        by_op = self.meter.commands.get("server", {})
        out = {op: n / self.acks_in_window for op, n in sorted(by_op.items()) if n}
        out["total"] = sum(out.values())
        return out

    def line(self) -> str:
        errors = sum(self.errors.values())
        mean = statistics.fmean(self.latencies) * 1000 if self.latencies else float("nan")
        internal = "" if self.internal_ms is None else f" (internal call {self.internal_ms:.1f})"
        return (
            f"{self.name:<9} {self.rate:8.0f} posts/s   ack p50 {self.pct(0.5):6.1f} ms   "
            f"p99 {self.pct(0.99):6.1f} ms   mean {mean:6.1f} ms{internal}   "
            f"cpu/post {self.cpu_us_per_post():5.0f} us   acks {len(self.latencies)}   errors {errors} "
            f"{self.errors or ''}"
        )

    def server_line(self) -> str:
        """The server's share of the window: its CPU and store commands per post."""
        commands = ", ".join(f"{op} {n:.2f}" for op, n in self.commands_per_post().items())
        return (
            f"{'':<9} server per post: cpu {self.cpu_us_per_post('server'):5.0f} us, "
            f"store commands {commands or 'n/a (no sms_store_commands_total)'}"
        )

    def figures(self, prefix: str) -> dict[str, float]:
        """The rate and latency figures, under `prefix`."""
        return {
            f"{prefix}_posts_per_s": self.rate,
            f"{prefix}_p50_ms": self.pct(0.5),
            f"{prefix}_p99_ms": self.pct(0.99),
            f"{prefix}_mean_ms": statistics.fmean(self.latencies) * 1000 if self.latencies else float("nan"),
            f"{prefix}_errors": sum(self.errors.values()),
        }


class PostSource:
    """Signed posts: inbound messages with fresh sids, or status callbacks for known sids."""

    def __init__(self, route: str, contacts: list[str], sids: list[str]) -> None:
        self.route = route
        self.path = f"/twilio/{route}"
        self.url = PUBLIC_BASE + self.path
        self.contacts = contacts
        self.sids = sids
        self.validator = RequestValidator(AUTH_TOKEN)
        self.n = 0

    def next(self) -> tuple[dict[str, str], dict[str, str]]:
        self.n += 1
        if self.route == "inbound":
            sid = "SM" + uuid.uuid4().hex
            params = {
                "MessageSid": sid,
                "SmsSid": sid,
                "SmsMessageSid": sid,
                "AccountSid": "AC" + "0" * 32,
                "From": self.contacts[self.n % len(self.contacts)],
                "To": OUR_NUMBER,
                "Body": f"bench message {self.n}",
                "NumMedia": "0",
                "NumSegments": "1",
                "SmsStatus": "received",
                "ApiVersion": "2010-04-01",
            }
        else:
            sid = self.sids[self.n % len(self.sids)]
            status = ("sending", "sent", "delivered")[(self.n // len(self.sids)) % 3]
            params = {
                "MessageSid": sid,
                "SmsSid": sid,
                "AccountSid": "AC" + "0" * 32,
                "From": OUR_NUMBER,
                "To": self.contacts[0],
                "MessageStatus": status,
                "SmsStatus": status,
                "ApiVersion": "2010-04-01",
            }
        return params, {SIGNATURE_HEADER: self.validator.compute_signature(self.url, params)}


async def load(
    name: str,
    base_url: str,
    source: PostSource,
    concurrency: int,
    duration: float,
    warmup: float,
    processes: list[ChildProcess],
    metrics_urls: dict[str, str] | None = None,
    bridge: bool = True,
) -> Result:
    """Keeps `concurrency` posts in flight; measures those that start after the warm-up.

    `processes[0]` is the target (its CPU is the line's cpu/post); the meter covers all of `processes` and the
    store commands of `metrics_urls` (name -> /metrics URL).
    """
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as http:
        start = time.monotonic()
        measure_from = start + warmup
        stop_at = measure_from + duration
        result = Result(name, duration, processes[0].name)

        async def worker() -> None:
            while (t0 := time.monotonic()) < stop_at:
                params, headers = source.next()
                try:
                    async with http.post(base_url + source.path, data=params, headers=headers) as resp:
                        await resp.read()
                        status = resp.status
                except aiohttp.ClientError as exc:
                    status = -1
                    result.errors[type(exc).__name__] = result.errors.get(type(exc).__name__, 0) + 1
                done = time.monotonic()
                elapsed = done - t0
                if status == 200:
                    result.acked_sids.append(params["MessageSid"])
                    result.acked_at.append(done)
                if t0 < measure_from:
                    continue
                if status == 200:
                    result.latencies.append(elapsed)
                elif status != -1:
                    result.errors[str(status)] = result.errors.get(str(status), 0) + 1

        async def window() -> None:
            # The processes' own view of the measured window: CPU they spent, store commands the server sent,
            # and (bridge) how much of each ack was the internal call. Per post, these do not depend on what
            # else loads the machine.
            await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
            t0 = time.monotonic()
            meter = await Meter(processes, metrics_urls or {}).start()
            s0, n0 = await internal_calls(base_url) if bridge else (0.0, 0.0)
            await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
            t1 = time.monotonic()
            await meter.stop()
            s1, n1 = await internal_calls(base_url) if bridge else (0.0, 0.0)
            if bridge:
                result.internal_ms = (s1 - s0) / (n1 - n0) * 1000 if n1 > n0 else float("nan")
            result.meter, result.window = meter, (t0, t1)

        watcher = asyncio.create_task(window())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await watcher
        return result


async def load_direct(
    target: str,
    source: PostSource,
    concurrency: int,
    duration: float,
    warmup: float,
    server: ChildProcess,
    metrics_url: str,
) -> Result:
    """The same posts as RecordInbound/RecordStatus calls straight to the server: what the store allows."""
    md = (("authorization", f"Bearer {mint_token(JWT_SECRET, 'bench-bridge', 'service')}"),)
    result = Result("direct", duration, server.name)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ingest_pb2_grpc.SmsIngestServiceStub(channel)
        start = time.monotonic()
        measure_from = start + warmup
        stop_at = measure_from + duration

        async def worker() -> None:
            while (t0 := time.monotonic()) < stop_at:
                params, _ = source.next()
                form = parse_form(urlencode(params).encode())
                try:
                    if source.route == "inbound":
                        await stub.RecordInbound(inbound_request(form), metadata=md, timeout=30)
                    else:
                        await stub.RecordStatus(status_request(form), metadata=md, timeout=30)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                done = time.monotonic()
                elapsed = done - t0
                if code == "OK":
                    result.acked_sids.append(params["MessageSid"])
                    result.acked_at.append(done)
                if t0 < measure_from:
                    continue
                if code == "OK":
                    result.latencies.append(elapsed)
                else:
                    result.errors[code] = result.errors.get(code, 0) + 1

        async def window() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
            t0 = time.monotonic()
            meter = await Meter([server], {"server": metrics_url}).start()
            await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
            t1 = time.monotonic()
            result.meter, result.window = await meter.stop(), (t0, t1)

        watcher = asyncio.create_task(window())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await watcher
    return result


async def internal_calls(bridge_url: str) -> tuple[float, float]:
    """Sum (s) and count of successful internal calls, from the bridge's own histogram."""
    # Its own session: the load's connection pool is always full.
    async with aiohttp.ClientSession() as http, http.get(bridge_url + "/metrics") as resp:
        text = await resp.text()
    total = count = 0.0
    for line in text.splitlines():
        if 'result="OK"' not in line:
            continue
        if line.startswith("sms_bridge_ingest_call_seconds_sum{"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("sms_bridge_ingest_call_seconds_count{"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def make_outbound(target: str, n: int, contact: str, db: Any) -> list[str]:
    """n outbound messages through Send, each given a Twilio sid as the worker would; their sids."""
    sids: list[str] = []
    with grpc.insecure_channel(target) as channel:
        stub = sms_pb2_grpc.SmsServiceStub(channel)
        md = (("authorization", f"Bearer {mint_token(JWT_SECRET, 'bench-agent', 'agent')}"),)
        for i in range(n):
            resp = stub.Send(sms_pb2.SendRequest(to=contact, body=f"bench {i}"), metadata=md, timeout=30)
            sid = "SM" + uuid.uuid4().hex
            db["messages"].update_one({"_id": ObjectId(resp.message.id)}, {"$set": {"twilio_sid": sid}})
            sids.append(sid)
    return sids


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark; prints one line per target and the ratio; 1 if an acknowledged post was not stored."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--concurrency", "--in-flight", dest="concurrency", type=int, default=50, help="posts in flight (default 50)"
    )
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per target (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first (default 2)")
    p.add_argument("--route", choices=["inbound", "status"], default="inbound")
    p.add_argument("--contacts", type=int, default=200, help="distinct contact numbers (inbound)")
    p.add_argument("--no-direct", action="store_true", help="skip the direct gRPC run")
    p.add_argument("--no-noop", action="store_true", help="skip the bridge run against a no-op ingest server")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--serve-noop", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_baseline:
        run_baseline(args.serve_baseline)
        return 0
    if args.serve_noop:
        run_noop_ingest(args.serve_noop)
        return 0

    route: str = args.route
    contacts = [f"+1415556{i:04d}" for i in range(args.contacts)]
    figures: dict[str, Any] = {
        "route": route,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
    }
    exit_code = 0
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sms-bench-")))
        print(f"logs in {tmp}", file=sys.stderr)
        store_log = stack.enter_context(open(tmp / "stores.log", "wb"))
        mongo = start_mongo(":memory:", output=store_log)
        stack.callback(mongo.stop)
        redis = start_redis(tmp / "valkey", output=store_log)
        stack.callback(redis.stop)
        grpc_port, bridge_port, base_port = free_port(), free_port(), free_port()
        server_metrics, bridge_metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        server_metrics_url = f"http://{server_metrics}/metrics"
        target = f"127.0.0.1:{grpc_port}"
        env = without_settings(os.environ)
        env.update(
            MONGODB_URI=mongo.uri,
            MONGODB_DB="sms_bench",
            REDIS_URL=redis.uri,
            SMS_JWT_SECRET=JWT_SECRET,
            SMS_INGEST_SECRET=INGEST_SECRET,
            TWILIO_FROM_NUMBER=OUR_NUMBER,
            SMS_GRPC_TARGET=target,
            SMS_BRIDGE_ADDR=f"127.0.0.1:{bridge_port}",
            TWILIO_AUTH_TOKEN=AUTH_TOKEN,
            SMS_PUBLIC_BASE_URL=PUBLIC_BASE,
        )
        # Each process that serves metrics on a port of its own, as `sms-gateway dev` runs them.
        server, _ = start_server({**env, "SMS_METRICS_ADDR": server_metrics}, grpc_port, within=60, log_dir=tmp)
        stopped_with(stack, server)
        bridge_args = [*SMS_GATEWAY, "bridge"]
        bridge = stopped_with(
            stack,
            start_listening(
                "bridge",
                bridge_args,
                {**bridge_env(env), "SMS_METRICS_ADDR": bridge_metrics},
                "127.0.0.1",
                bridge_port,
                log_dir=tmp,
            ),
        )
        baseline_args = [*THIS_SCRIPT, "--serve-baseline", str(base_port)]
        baseline = stopped_with(
            stack, start_listening("baseline", baseline_args, env, "127.0.0.1", base_port, log_dir=tmp)
        )

        db_client: MongoClient[dict[str, object]] = MongoClient(mongo.uri)
        stack.callback(db_client.close)
        db = db_client["sms_bench"]
        sids = make_outbound(target, 100, contacts[0], db) if route == "status" else []

        def stored(acked: list[str]) -> int:
            return db["messages"].count_documents({"twilio_sid": {"$in": acked}})

        print(
            f"{route} posts, {args.concurrency} in flight, {args.duration:.0f} s each "
            f"(after {args.warmup:.0f} s warm-up)"
        )
        if not args.no_direct:
            # First, while the database is as small as for the bridge run: what the store allows at all.
            direct = asyncio.run(
                load_direct(
                    target,
                    PostSource(route, contacts, sids),
                    args.concurrency,
                    args.duration,
                    args.warmup,
                    server,
                    server_metrics_url,
                )
            )
            print(direct.line() + "  <- the same calls straight to the gRPC server (cpu: the server's)")
            print(direct.server_line())
            figures.update(direct.figures("direct"))
            figures[f"direct_server_cpu_us_per_{route}"] = direct.cpu_us_per_post("server")
            figures[f"direct_store_commands_per_{route}"] = direct.commands_per_post().get("total", float("nan"))
            figures[f"direct_store_commands_per_{route}_by_operation"] = direct.commands_per_post()
            if route == "inbound":
                figures["direct_acknowledged"] = len(direct.acked_sids)
                figures["direct_stored"] = stored(direct.acked_sids)
                figures["direct_lost"] = figures["direct_acknowledged"] - figures["direct_stored"]
        bridge_result = asyncio.run(
            load(
                "bridge",
                f"http://127.0.0.1:{bridge_port}",
                PostSource(route, contacts, sids),
                args.concurrency,
                args.duration,
                args.warmup,
                [bridge, server],
                {"server": server_metrics_url},
            )
        )
        print(bridge_result.line())
        print(bridge_result.server_line())
        figures.update(bridge_result.figures(route))
        figures[f"{route}_internal_call_ms"] = bridge_result.internal_ms
        figures["bridge_cpu_us_per_post"] = bridge_result.cpu_us_per_post("bridge")
        figures[f"server_cpu_us_per_{route}"] = bridge_result.cpu_us_per_post("server")
        figures[f"store_commands_per_{route}"] = bridge_result.commands_per_post().get("total", float("nan"))
        figures[f"store_commands_per_{route}_by_operation"] = bridge_result.commands_per_post()
        base_result = asyncio.run(
            load(
                "baseline",
                f"http://127.0.0.1:{base_port}",
                PostSource(route, contacts, sids),
                args.concurrency,
                args.duration,
                args.warmup,
                [baseline],
                bridge=False,
            )
        )
        print(base_result.line())
        print(f"ratio     {bridge_result.rate / base_result.rate:.2f}x baseline rate")
        figures.update(base_result.figures("baseline"))
        figures["baseline_cpu_us_per_post"] = base_result.cpu_us_per_post()
        figures["ratio_to_baseline"] = bridge_result.rate / base_result.rate
        if not args.no_noop:
            noop_port, noop_bridge_port = free_port(), free_port()
            noop_args = [*THIS_SCRIPT, "--serve-noop", str(noop_port)]
            stopped_with(
                stack, start_grpc("noop-ingest", noop_args, env, f"127.0.0.1:{noop_port}", within=60, log_dir=tmp)
            )
            noop_env = {
                **bridge_env(env),
                "SMS_GRPC_TARGET": f"127.0.0.1:{noop_port}",
                "SMS_BRIDGE_ADDR": f"127.0.0.1:{noop_bridge_port}",
            }
            noop_bridge = stopped_with(
                stack, start_listening("bridge-noop", bridge_args, noop_env, "127.0.0.1", noop_bridge_port, log_dir=tmp)
            )
            noop_result = asyncio.run(
                load(
                    "bridge*",
                    f"http://127.0.0.1:{noop_bridge_port}",
                    PostSource(route, contacts, sids),
                    args.concurrency,
                    args.duration,
                    args.warmup,
                    [noop_bridge],
                )
            )
            print(noop_result.line() + "  <- bridge against a no-op ingest server")
            cpu_ratio = base_result.cpu_us_per_post() / noop_result.cpu_us_per_post()
            print(
                f"ratio*    {noop_result.rate / base_result.rate:.2f}x baseline rate (bridge's own cost); "
                f"by CPU per post {cpu_ratio:.2f}x"
            )
            figures.update(noop_result.figures("noop"))
            figures["noop_bridge_cpu_us_per_post"] = noop_result.cpu_us_per_post()
            figures["noop_ratio_to_baseline"] = noop_result.rate / base_result.rate
            figures["noop_cpu_ratio_to_baseline"] = cpu_ratio
        figures["acknowledged"] = len(bridge_result.acked_sids)
        if route == "inbound":
            acked = bridge_result.acked_sids
            figures["stored"] = stored(acked)
            figures["lost"] = len(acked) - figures["stored"]
            print(f"stored    {figures['stored']} of the {len(acked)} inbound posts the bridge acknowledged")
            if figures["lost"]:
                exit_code = 1
    write_json(args.json, figures)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
