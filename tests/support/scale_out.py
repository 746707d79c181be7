"""Scale-out on loopback: Sends and Subscribe streams through Envoy over `sms-gateway dev --replicas N` while
children are SIGKILLed, then the exactly-once checks. Shared by tests/test_scale_out.py and bench/scale_out.py.

The checks, each as lost / duplicated:
  twilio_creates    each message created at the simulator once (by body, unique per message);
  callbacks         each status the simulator moved a message through is in its stored history, once;
  subscriber_events each subscriber got each (message, status) it is entitled to (from the stored history's applied
                    entries), and no event id twice;
and every message reaches the simulator's final status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
from bson import ObjectId
from pymongo import AsyncMongoClient
from redis.asyncio import Redis
from sms.v1 import sms_pb2, sms_pb2_grpc, types_pb2
from sms_gateway_client import subscribe

from devstack.probes import grpc_check, http_check
from server.auth import mint_token
from server.config import Config
from server.events import F_DATA
from tests.support.dev_stack import DevStack, dev_stack, sim_messages, sim_request
from tests.support.polling import eventually_async
from tests.support.processes import pid_alive

# The per-user send limit would measure itself; a frequent reconciler finishes a Send that a killed server left
# half-done as soon as its 30 s grace is over.
STACK_ENV = {"SMS_SEND_RATE_PER_USER": "0", "SMS_RECONCILE_INTERVAL_SECONDS": "3"}
# For a short run at a low rate: a short job timeout brings back a killed worker's jobs sooner (arq runs them again
# SMS_JOB_TIMEOUT_SECONDS + 10 s after the kill), with room for two Twilio calls each. Under a saturated store
# sends take longer than that, so a long run keeps the defaults.
QUICK_JOBS_ENV = {"SMS_JOB_TIMEOUT_SECONDS": "6", "TWILIO_TIMEOUT_SECONDS": "2.5"}
# (user, role): who sends, and who subscribes (admins to every owner's events, agents to their own).
SENDERS = (("agent-1", "agent"), ("agent-2", "agent"), ("admin-1", "admin"))
SUBSCRIBERS = (("admin-1", "admin"), ("agent-1", "agent"), ("admin-2", "admin"), ("agent-2", "agent"))
CONTACTS = 100
TERMINAL = frozenset({"delivered", "undelivered", "failed", "canceled", "read"})
# What a client sees while a replica dies under its call or Envoy has no healthy one for a moment: Send is asked
# again with the same request_id, which the server deduplicates.
SEND_RETRY_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
    }
)
# A stream whose replica died reaches the client through Envoy as a reset: UNAVAILABLE or INTERNAL.
SUBSCRIBE_RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL})
CHANNEL_OPTIONS = [
    # A channel must find Envoy again at once, not after gRPC's default reconnect backoff (up to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
]
# Generous: a deadline cuts a Send off half-way (the server finishes it only after a 30 s grace).
SEND_DEADLINE_S = 30.0
PROBE_INTERVAL = 0.1
# Throughput has resumed once a second of SENTs reaches this share of the rate in the seconds before the kill.
RESUMED_SHARE = 0.5
RATE_WINDOW_S = 5.0


@dataclass(frozen=True)
class Plan:
    """One run: how many replicas and messages, how they are sent, and which children die when."""

    replicas: int = 2
    messages: int = 1000
    clients: int = 5
    in_flight: int = 50
    subscribers: int = 4
    # Child names (dev.json's `pids`) SIGKILLed in this order, the first `first_kill_s` after the first Send.
    kills: tuple[str, ...] = ("server-1", "worker-2", "bridge-1")
    first_kill_s: float = 8.0
    kill_spacing_s: float = 5.0
    # Sends per second over all clients; 0: as fast as they are answered.
    send_rate: float = 0.0
    start_within: float = 120.0
    final_within: float = 300.0
    # How long subscribers get to catch up once every message is final.
    catch_up_within: float = 30.0
    recovery_within: float = 60.0
    # Settings for the stack's children on top of STACK_ENV.
    env: tuple[tuple[str, str], ...] = ()


@dataclass
class Kill:
    """One SIGKILL and how long its child (and the pipeline) took to come back."""

    name: str
    pid: int
    at: float
    at_wall: datetime
    # Until the new process runs (answers its port); until it serves (SERVING, /healthz, a first job done).
    up_s: float | None = None
    recovery_s: float | None = None


@dataclass
class Subscriber:
    """One Subscribe stream's user and everything it received."""

    user: str
    role: str
    token: str
    event_ids: Counter[str] = field(default_factory=Counter)
    pairs: set[tuple[str, str]] = field(default_factory=set)
    # Why the stream stopped for good (a status the helper does not reconnect on), if it did.
    error: str = ""

    @property
    def all_owners(self) -> bool:
        return self.role == "admin"

    def entitled(self, doc: dict[str, Any]) -> bool:
        """Whether this subscriber's stream carries the message's events (every owner's for an admin)."""
        return self.all_owners or doc.get("owner") == self.user


def kind_of(name: str) -> str:
    """'server' for 'server-2' (or 'server')."""
    return name.rsplit("-", 1)[0] if name[-1].isdigit() else name


def status_name(value: int) -> str:
    """'sent' for MESSAGE_STATUS_SENT."""
    return types_pb2.MessageStatus.Name(value).removeprefix("MESSAGE_STATUS_").lower()  # type: ignore[arg-type]


def body_of(i: int) -> str:
    """Message i's body: unique per message, so the simulator's records can be counted per message."""
    return f"scale-out {i}"


def contact_of(i: int) -> tuple[str, str]:
    """(sender, contact number) of message i: each contact belongs to one sender, so no Send is refused."""
    contact = i % CONTACTS
    return SENDERS[contact % len(SENDERS)][0], f"+1415555{contact:04d}"


# Probes (blocking; run in a thread) -----------------------------------------------------------------------
def worker_jobs(metrics_url: str) -> float:
    """The send jobs a worker has run (sms_worker_jobs_total over every outcome); -1 while it does not answer."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=1) as resp:
            text = resp.read().decode()
    except (OSError, urllib.error.URLError, ValueError):
        return -1.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("sms_worker_jobs_total"))


def probes(stack: DevStack, name: str) -> tuple[Callable[[], bool], Callable[[], bool]]:
    """(up, serving) of the child `name`: a server SERVING, a bridge's /healthz 200 (both at once); a worker
    answering its metrics port, then having done a first job."""
    where = stack.info["replicas"][kind_of(name)][name]
    kind = kind_of(name)
    if kind == "server":
        return grpc_check(where), grpc_check(where)
    if kind == "bridge":
        return http_check(f"{where}/healthz"), http_check(f"{where}/healthz")
    if kind == "worker":
        return (lambda: worker_jobs(where) >= 0), (lambda: worker_jobs(where) > 0)
    raise ValueError(f"no probe for {name}")


# The run ----------------------------------------------------------------------------------------------------
class Run:
    """A plan against one running stack: senders, subscribers, kills, then the checks."""

    def __init__(self, plan: Plan, stack: DevStack) -> None:
        self.plan = plan
        self.stack = stack
        self.target = stack.web_url.removeprefix("http://")
        secret = str(stack.info["jwt_secret"])
        self.tokens = {user: mint_token(secret, user, role) for user, role in (*SENDERS, *SUBSCRIBERS)}
        self.subscribers = [Subscriber(user, role, self.tokens[user]) for user, role in SUBSCRIBERS[: plan.subscribers]]
        self.message_ids: dict[int, str] = {}
        self.send_retries = 0
        self.subscriber_reconnects = 0
        self.kills: list[Kill] = []
        self.started = 0.0
        self.started_wall = datetime.now(UTC)
        self.sends_done = 0.0
        # What the servers wrote to the event log: tells a subscriber's loss from an event never written.
        self.logged: set[tuple[str, str]] = set()

    # Sending ---------------------------------------------------------------------------------------------
    async def send_one(self, stub: sms_pb2_grpc.SmsServiceAsyncStub, i: int) -> None:
        """Sends message i, asking again with the same request_id while the failure is one a retry may cure."""
        user, to = contact_of(i)
        request = sms_pb2.SendRequest(to=to, body=body_of(i), request_id=f"scale-out-{i}")
        metadata = (("authorization", f"Bearer {self.tokens[user]}"),)
        attempt = 0
        give_up = time.monotonic() + self.plan.recovery_within
        while True:
            try:
                response = await stub.Send(request, metadata=metadata, timeout=SEND_DEADLINE_S)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in SEND_RETRY_CODES or time.monotonic() > give_up:
                    raise
                self.send_retries += 1
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt))
                attempt += 1
                continue
            self.message_ids[i] = response.message.id
            return

    async def client(self, indices: Iterator[int], lanes: int) -> None:
        """One client: its own channel to Envoy, `lanes` Sends in flight, taking message numbers from `indices`."""
        async with grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS) as channel:
            stub = sms_pb2_grpc.SmsServiceStub(channel)

            async def lane() -> None:
                for i in indices:
                    if self.plan.send_rate > 0:
                        due = self.started + i / self.plan.send_rate
                        await asyncio.sleep(max(0.0, due - time.monotonic()))
                    await self.send_one(stub, i)

            await asyncio.gather(*(lane() for _ in range(lanes)))

    async def send_all(self) -> None:
        """Every message, by `clients` clients with `in_flight` Sends in flight between them."""
        indices = iter(range(self.plan.messages))
        clients = max(1, min(self.plan.clients, self.plan.in_flight))
        lanes = [
            self.plan.in_flight // clients + (1 if c < self.plan.in_flight % clients else 0) for c in range(clients)
        ]
        await asyncio.gather(*(self.client(indices, n) for n in lanes))
        self.sends_done = time.monotonic()

    # Subscribing -------------------------------------------------------------------------------------------
    async def follow(self, sub: Subscriber, start_after: str) -> None:
        """Records every event of `sub`'s stream; the client helper reconnects and resumes after its last event."""
        stream = subscribe(
            self.target,
            sub.token,
            all_owners=sub.all_owners,
            resume_token=start_after,
            retry_codes=SUBSCRIBE_RETRY_CODES,
        )
        try:
            async for response in stream:
                if response.WhichOneof("response") != "event":
                    continue
                event = response.event
                sub.event_ids[event.id] += 1
                if event.WhichOneof("payload") == "message":
                    sub.pairs.add((event.message.id, status_name(event.message.status)))
        except grpc.aio.AioRpcError as exc:
            sub.error = f"{exc.code().name}: {exc.details()}"

    # Killing ----------------------------------------------------------------------------------------------
    async def kill_all(self) -> None:
        """SIGKILLs the plan's children on schedule and waits for each to serve again."""
        watchers = []
        for n, name in enumerate(self.plan.kills):
            due = self.started + self.plan.first_kill_s + n * self.plan.kill_spacing_s
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            pid = int(self.stack.reload()["pids"][name])
            kill = Kill(name, pid, time.monotonic(), datetime.now(UTC))
            os.kill(pid, signal.SIGKILL)
            self.kills.append(kill)
            watchers.append(asyncio.create_task(self.watch_recovery(kill)))
        await asyncio.gather(*watchers)

    async def watch_recovery(self, kill: Kill) -> None:
        """Sets kill.up_s and kill.recovery_s as a new process of the child runs and serves (None: not in time)."""
        up, serving = probes(self.stack, kill.name)

        def replaced() -> bool:
            return self.stack.reload()["pids"].get(kill.name) not in (None, kill.pid)

        deadline = kill.at + self.plan.recovery_within
        with contextlib.suppress(AssertionError):
            await self._until(lambda: replaced() and up(), deadline, f"{kill.name} to run again")
            kill.up_s = time.monotonic() - kill.at
            await self._until(serving, deadline, f"{kill.name} to serve again")
            kill.recovery_s = time.monotonic() - kill.at

    @staticmethod
    async def _until(probe: Callable[[], bool], deadline: float, what: str) -> None:
        await eventually_async(
            lambda: asyncio.to_thread(probe),
            max(0.0, deadline - time.monotonic()),
            what,
            interval=PROBE_INTERVAL,
            ignoring=(OSError, ValueError),
        )


async def logged_pairs(redis_url: str, after: str) -> set[tuple[str, str]]:
    """(message id, status) of every message event in the log after `after`: what the servers wrote."""
    redis = Redis.from_url(redis_url)
    found: set[tuple[str, str]] = set()
    try:
        cursor = "(" + after
        while True:
            entries = await redis.xrange(Config.event_stream, min=cursor, max="+", count=1000)
            for entry_id, fields in entries:
                data = fields.get(F_DATA)
                if data:
                    event = types_pb2.Event.FromString(data)
                    if event.WhichOneof("payload") == "message":
                        found.add((event.message.id, status_name(event.message.status)))
                cursor = "(" + (entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))
            if len(entries) < 1000:
                return found
    finally:
        await redis.aclose()


async def last_event_id(redis_url: str) -> str:
    """The log's newest id ("0-0" when empty): subscribers start after it, so none misses the run's first events."""
    redis = Redis.from_url(redis_url)
    try:
        info = await redis.xinfo_stream(Config.event_stream)
    except Exception:  # no such key: nothing was ever logged
        return "0-0"
    finally:
        await redis.aclose()
    raw = info.get("last-generated-id") or b"0-0"
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class _ReconnectCounter(logging.Handler):
    """Counts the subscribe helper's reconnects (it logs each one)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "reconnecting" in record.getMessage():
            self.count += 1


async def execute(plan: Plan, stack: DevStack) -> dict[str, Any]:
    """Runs `plan` against `stack` and returns every figure and check (see the module docstring)."""
    run = Run(plan, stack)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(stack.info["mongodb_uri"], tz_aware=True)
    db = mongo[stack.info["mongodb_db"]]
    counter = _ReconnectCounter()
    helper_log = logging.getLogger("sms_gateway_client.subscribe")
    helper_log.addHandler(counter)
    previous_level = helper_log.level
    helper_log.setLevel(logging.INFO)
    start_after = await last_event_id(stack.info["redis_url"])
    followers = [asyncio.create_task(run.follow(sub, start_after)) for sub in run.subscribers]
    try:
        run.started = time.monotonic()
        run.started_wall = datetime.now(UTC)
        await asyncio.gather(run.send_all(), run.kill_all())
        docs = await wait_final(plan, db, run)
        sims = await wait_callbacks_posted(plan, stack)
        # Everything is final and posted: the log holds every event the servers will ever write for the run.
        run.logged = await logged_pairs(stack.info["redis_url"], start_after)
        await wait_caught_up(plan, run, docs)
        run.subscriber_reconnects = counter.count
        return figures(plan, run, docs, sims)
    finally:
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        helper_log.removeHandler(counter)
        helper_log.setLevel(previous_level)
        await mongo.close()


async def _docs(db: Any, run: Run) -> list[dict[str, Any]]:
    ids = [ObjectId(mid) for mid in run.message_ids.values()]
    found: list[dict[str, Any]] = await db.messages.find({"_id": {"$in": ids}}).to_list()
    return found


async def wait_final(plan: Plan, db: Any, run: Run) -> list[dict[str, Any]]:
    """The run's messages once each is in a terminal status (or as they are when time runs out)."""

    def all_final(docs: list[dict[str, Any]]) -> bool:
        return len(docs) == plan.messages and all(d["status"] in TERMINAL for d in docs)

    with contextlib.suppress(AssertionError):
        # Seldom: each look scans the run's messages under SecantusDB's global lock, slowing the pipeline.
        return await eventually_async(
            lambda: _docs(db, run), plan.final_within, "every message to be final", until=all_final, interval=2.0
        )
    return await _docs(db, run)


async def wait_callbacks_posted(plan: Plan, stack: DevStack) -> dict[str, dict[str, Any]]:
    """The simulator's messages by body, once it has no status callback left to post."""

    def idle() -> int:
        return int(sim_request(stack, "GET", "/_sim/stats")["pending_callbacks"])

    with contextlib.suppress(AssertionError):
        await eventually_async(
            lambda: asyncio.to_thread(idle), plan.catch_up_within, "the callbacks to be posted", until=lambda n: n == 0
        )
    messages = await asyncio.to_thread(sim_messages, stack, direction="outbound-api")
    by_body: dict[str, list[dict[str, Any]]] = {}
    for message in messages:
        by_body.setdefault(message["body"], []).append(message)
    return {body: {"count": len(found), "message": found[0]} for body, found in by_body.items()}


def expected_pairs(sub: Subscriber, docs: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(message id, status) for every status change of the messages `sub` is entitled to."""
    return {
        (str(doc["_id"]), entry["status"])
        for doc in docs
        if sub.entitled(doc)
        for entry in doc["status_history"]
        if entry.get("applied", True)
    }


async def wait_caught_up(plan: Plan, run: Run, docs: list[dict[str, Any]]) -> None:
    """Gives each subscriber time to receive what it is entitled to (the checks count what is still missing);
    an event the servers never wrote is not waited for."""
    wanted = [(sub, expected_pairs(sub, docs) & run.logged) for sub in run.subscribers]

    def caught_up() -> bool:
        return all(expected <= sub.pairs for sub, expected in wanted)

    with contextlib.suppress(AssertionError):
        await eventually_async(caught_up, plan.catch_up_within, "the subscribers to catch up", interval=0.2)


# Figures ------------------------------------------------------------------------------------------------------
def _sent_at(doc: dict[str, Any]) -> datetime | None:
    # The `sent` entry's time is when the server stored Twilio's callback; a `delivered` entry carries Twilio's
    # RawDlrDoneDate, which has minutes only.
    times = [entry["time"] for entry in doc["status_history"] if entry["status"] == "sent"]
    if not times:
        return None
    first: datetime = min(times)
    return first if first.tzinfo else first.replace(tzinfo=UTC)


def twilio_checks(plan: Plan, sims: dict[str, dict[str, Any]]) -> dict[str, int]:
    """Each message created at the simulator exactly once."""
    counts = [sims.get(body_of(i), {"count": 0})["count"] for i in range(plan.messages)]
    return {
        "twilio_creates": sum(counts),
        "lost_twilio_creates": sum(1 for n in counts if n == 0),
        "duplicated_twilio_creates": sum(n - 1 for n in counts if n > 1),
    }


def callback_checks(plan: Plan, docs: list[dict[str, Any]], sims: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each simulator status in the stored history once; each message final with the simulator's status."""
    lost = duplicated = entries = 0
    final: Counter[str] = Counter()
    not_final = plan.messages - len(docs)
    for doc in docs:
        stored = [entry["status"] for entry in doc["status_history"]]
        entries += len(stored)
        duplicated += len(stored) - len(set(stored))
        sim = sims.get(doc["body"], {}).get("message")
        twilio = {entry["status"] for entry in sim["history"]} if sim else set()
        lost += len(twilio - set(stored))
        final[doc["status"]] += 1
        if doc["status"] not in TERMINAL or sim is None or sim["status"] != doc["status"]:
            not_final += 1
    return {
        "status_entries_stored": entries,
        "lost_callbacks": lost,
        "duplicated_callbacks": duplicated,
        "not_final": not_final,
        "final_statuses": dict(final),
    }


def subscriber_checks(run: Run, docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per subscriber: (message, status) pairs expected vs received, and event ids received more than once.

    A lost pair is either lost on the way to the subscriber (the log has it: resume, reconnect, fan-out) or was
    never written to the log by a server (the status was stored but its event not appended): the latter is lost
    for every subscriber alike, and counted apart as well (`events_never_logged`).
    """
    ours = {str(doc["_id"]) for doc in docs}
    per: dict[str, dict[str, Any]] = {}
    never_logged: set[tuple[str, str]] = set()
    for n, sub in enumerate(run.subscribers):
        expected = expected_pairs(sub, docs)
        missing = expected - {pair for pair in sub.pairs if pair[0] in ours}
        never_logged |= missing - run.logged
        per[f"{n + 1}-{sub.user}"] = {
            "expected": len(expected),
            "received": len(expected) - len(missing),
            "lost": len(missing),
            "lost_in_log": len(missing & run.logged),
            "duplicated": sum(count - 1 for count in sub.event_ids.values() if count > 1),
            "events": sum(sub.event_ids.values()),
            # A few of what is missing, to start an investigation from.
            "lost_examples": sorted(missing)[:5],
            "error": sub.error,
        }
    return {
        "subscribers": per,
        "lost_subscriber_events": sum(s["lost"] for s in per.values()),
        "lost_subscriber_events_in_log": sum(s["lost_in_log"] for s in per.values()),
        "duplicated_subscriber_events": sum(s["duplicated"] for s in per.values()),
        "events_never_logged": len(never_logged),
        "events_never_logged_examples": sorted(never_logged)[:5],
    }


def throughput_recovery(sent_times: list[datetime], kill: Kill) -> float | None:
    """Seconds from the kill until a second of SENTs reaches RESUMED_SHARE of the rate just before it."""
    at = kill.at_wall
    before = sum(1 for t in sent_times if 0 < (at - t).total_seconds() <= RATE_WINDOW_S) / RATE_WINDOW_S
    if before <= 0:
        return None
    last = max(sent_times)
    step = 0.0
    while at.timestamp() + step <= last.timestamp():
        start = at.timestamp() + step
        if sum(1 for t in sent_times if start <= t.timestamp() < start + 1.0) >= RESUMED_SHARE * before:
            return step
        step += 0.25
    return None


def figures(plan: Plan, run: Run, docs: list[dict[str, Any]], sims: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Everything measured and checked, under stable snake_case keys."""
    sent_times = [t for t in map(_sent_at, docs) if t is not None]
    end_to_end_s = (max(sent_times) - run.started_wall).total_seconds() if sent_times else float("nan")
    out: dict[str, Any] = {
        "replicas": plan.replicas,
        "messages": plan.messages,
        "clients": plan.clients,
        "in_flight": plan.in_flight,
        "send_per_s": plan.messages / max(1e-9, run.sends_done - run.started),
        "end_to_end_s": end_to_end_s,
        "end_to_end_per_s": len(sent_times) / end_to_end_s if sent_times else 0.0,
        "send_retries": run.send_retries,
        "subscriber_reconnects": run.subscriber_reconnects,
        **twilio_checks(plan, sims),
        **callback_checks(plan, docs, sims),
        **subscriber_checks(run, docs),
        "kills": [
            {
                "name": k.name,
                "at_s": k.at - run.started,
                "up_s": k.up_s,
                "recovery_s": k.recovery_s,
                "throughput_recovery_s": throughput_recovery(sent_times, k),
            }
            for k in run.kills
        ],
    }
    for k in out["kills"]:
        kind = kind_of(k["name"])
        out[f"recovery_s_{kind}"] = k["recovery_s"]
        out[f"throughput_recovery_s_{kind}"] = k["throughput_recovery_s"]
    return out


async def run_plan(plan: Plan) -> dict[str, Any]:
    """Starts `sms-gateway dev --replicas` for `plan` on free ports in a temp data dir, runs it, stops it."""
    began = time.monotonic()
    with dev_stack({**STACK_ENV, **dict(plan.env)}, timeout=plan.start_within, replicas=plan.replicas) as stack:
        started = time.monotonic()
        with stack.proc.log_on_error():
            result = await execute(plan, stack)
        result["log"] = str(stack.proc.log_path)
        result["stack_start_s"] = started - began
        result["run_s"] = time.monotonic() - started
        # Ctrl-C stops every copy, the restarted ones included.
        pids = stack.reload()["pids"]
        result["stack_exit_code"] = stack.stop()
        result["children_left"] = sorted(name for name, pid in pids.items() if pid and pid_alive(int(pid)))
    result["stack_stop_s"] = time.monotonic() - began - result["stack_start_s"] - result["run_s"]
    return result


def problems(result: dict[str, Any], *, unlogged_events: bool = True) -> list[str]:
    """Every check that did not hold, in words (empty: all lost = 0, duplicated = 0, every message final).

    Without `unlogged_events`, subscriber events that no server wrote to the log are left out (their count is
    `events_never_logged`): what remains checks the subscribe path itself.
    """
    keys = [key for key in result if key.startswith(("lost_", "duplicated_")) and not key.endswith("_examples")]
    keys += ["not_final", "events_never_logged"]
    if not unlogged_events:
        keys = [key for key in keys if key not in ("lost_subscriber_events", "events_never_logged")]
    found = [f"{key} = {result[key]}" for key in keys if result[key] != 0]
    found += [f"{k['name']} did not run again" for k in result["kills"] if k["up_s"] is None]
    return found
