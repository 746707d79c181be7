"""Queued sending end to end: server, worker, webhook bridge and Twilio simulator as real processes."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from pymongo import AsyncMongoClient
from redis.asyncio import Redis
from sms.v1 import sms_pb2, sms_pb2_grpc

from server.documents import Fields
from server.embedded import EmbeddedServer, free_port
from tests.support.identities import auth, bridge_env, unique_number, unique_user
from tests.support.launch import start_listening, start_server, start_worker
from tests.support.polling import eventually_async
from tests.support.processes import ROOT, SMS_GATEWAY, ChildProcess

ACCOUNT_SID = "AC" + "1" * 32
AUTH_TOKEN = "worker-test-token"
FROM_NUMBER = "+15005550006"
ADMIN = auth("ops", "admin")
FINAL = {"delivered", "undelivered", "failed"}
# Job timeout for the crash tests: arq re-runs a SIGKILLed job after it + 10 s. Long enough for a settle and a
# send at 300 ms each on a loaded store: a job over it is dropped and waits for the reconciler.
SHORT_JOB_TIMEOUT = "4"


class Stack:
    """The processes of one test module and handles on their state."""

    def __init__(self, env: dict[str, str], sim_url: str, db: Any, redis: Redis) -> None:
        self.env = env
        self.sim_url = sim_url
        self.db = db
        self.redis = redis
        self.queue = env["SMS_ARQ_QUEUE"]
        self.worker: ChildProcess | None = None
        self.http: aiohttp.ClientSession | None = None
        self.procs: list[ChildProcess] = []

    # Processes

    async def start_worker(self, **overrides: str) -> ChildProcess:
        """Starts `sms-gateway worker` and waits for its arq health check key."""
        assert self.worker is None or not self.worker.alive(), "one worker at a time"
        proc = await start_worker({**self.env, **overrides}, self.redis)
        self.procs.append(proc)
        self.worker = proc
        return proc

    def stop_worker(self, sig: int = signal.SIGTERM) -> int:
        assert self.worker is not None
        code = self.worker.stop(sig, timeout=20)
        self.worker = None
        return code

    # Simulator control API

    async def sim(self, method: str, path: str, json: Any = None, **params: str) -> Any:
        assert self.http is not None
        async with self.http.request(method, self.sim_url + path, json=json, params=params) as resp:
            assert resp.status < 300, await resp.text()
            return await resp.json()

    async def set_rules(self, **rules: Any) -> None:
        await self.sim("PUT", "/_sim/rules", json=rules)

    async def sim_messages(self, to: str | None = None) -> list[Fields]:
        params = {"direction": "outbound-api", **({"to": to} if to else {})}
        data = await self.sim("GET", "/_sim/messages", **params)
        return list(data["messages"])

    async def creates_to(self, to: str) -> list[Fields]:
        data = await self.sim("GET", "/_sim/creates")
        return [c for c in data["creates"] if c["params"].get("To") == to]

    # Our state

    async def message(self, message_id: str) -> Fields:
        from bson import ObjectId

        doc = await self.db.messages.find_one({"_id": ObjectId(message_id)})
        assert doc is not None
        return dict(doc)

    async def final(self, message_id: str, statuses: set[str], within: float = 20) -> Fields:
        """The message once its status is one of `statuses`."""
        return await eventually_async(
            lambda: self.message(message_id),
            within,
            f"message {message_id} to reach {sorted(statuses)}",
            until=lambda doc: doc["status"] in statuses,
        )


@pytest.fixture(scope="module")
def stack_env(base_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Environment for this module's processes: own database and queue, Twilio pointed at the simulator."""
    sim_port, bridge_port = free_port(), free_port()
    yield {
        **base_env,
        "MONGODB_DB": f"sms_worker_{uuid.uuid4().hex[:8]}",
        "SMS_ARQ_QUEUE": f"arq:worker-test-{uuid.uuid4().hex[:8]}",
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_FROM_NUMBER": FROM_NUMBER,
        "TWILIO_API_BASE_URL": f"http://127.0.0.1:{sim_port}",
        "SMS_SIMULATOR_ADDR": f"127.0.0.1:{sim_port}",
        "SMS_BRIDGE_ADDR": f"127.0.0.1:{bridge_port}",
        "SMS_PUBLIC_BASE_URL": f"http://127.0.0.1:{bridge_port}",
        "SMS_RETRY_DELAYS": "0.2,0.4,0.8",
        "SMS_SEND_CONCURRENCY": "20",
        "TWILIO_MAX_CONCURRENCY": "10",
        "TWILIO_TIMEOUT_SECONDS": "1",
        "SMS_JOB_TIMEOUT_SECONDS": "5",
        "SMS_HEALTH_CHECK_INTERVAL_SECONDS": "1",
        "SMS_RECONCILE_INTERVAL_SECONDS": "1",
        "SMS_SYNC_INTERVAL_SECONDS": "0",  # on only where a test wants it (its lock would outlive a restart)
        "SMS_RECONCILE_AGE_SECONDS": "30",
        "SMS_DRAIN_SECONDS": "1",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="module")
async def stack(stack_env: dict[str, str], mongo: EmbeddedServer) -> AsyncIterator[Stack]:
    env = stack_env
    sim_host, sim_port = env["SMS_SIMULATOR_ADDR"].split(":")
    bridge_host, bridge_port = env["SMS_BRIDGE_ADDR"].split(":")
    procs: list[ChildProcess] = []
    client: AsyncMongoClient[Fields] = AsyncMongoClient(mongo.uri, tz_aware=True)
    redis = Redis.from_url(env["REDIS_URL"])
    try:
        procs.append(start_listening("simulator", [*SMS_GATEWAY, "twilio-simulator"], env, sim_host, int(sim_port)))
        server, addr = start_server(env)
        procs.append(server)
        env["SMS_GRPC_TARGET"] = addr
        env["SMS_GRPC_ADDR"] = addr
        bridge_args = [*SMS_GATEWAY, "bridge"]
        procs.append(start_listening("bridge", bridge_args, bridge_env(env), bridge_host, int(bridge_port)))
        s = Stack(env, f"http://{env['SMS_SIMULATOR_ADDR']}", client[env["MONGODB_DB"]], redis)
        s.procs = procs
        async with aiohttp.ClientSession() as http:
            s.http = http
            await s.start_worker()
            yield s
            if s.worker is not None:
                s.stop_worker()
    finally:
        for p in reversed(procs):
            p.stop()
        await redis.aclose()
        await client.close()


@pytest.fixture
async def sms(stack: Stack) -> AsyncIterator[sms_pb2_grpc.SmsServiceAsyncStub]:
    async with grpc.aio.insecure_channel(stack.env["SMS_GRPC_ADDR"]) as channel:
        yield sms_pb2_grpc.SmsServiceStub(channel)


@pytest.fixture(autouse=True)
async def clean_rules(stack: Stack) -> AsyncIterator[None]:
    await stack.set_rules()
    yield
    await stack.set_rules()


async def send(sms: sms_pb2_grpc.SmsServiceAsyncStub, user: str, to: str, body: str) -> str:
    resp = await sms.Send(sms_pb2.SendRequest(to=to, body=body), metadata=auth(user))
    return str(resp.message.id)


async def test_sent_message_reaches_sent_with_sid(stack: Stack, sms: sms_pb2_grpc.SmsServiceAsyncStub) -> None:
    to = unique_number()
    message_id = await send(sms, unique_user(), to, "hello from the worker")
    doc = await stack.final(message_id, {"sent", "delivered"})
    assert doc["twilio_sid"].startswith("SM")
    assert doc["attempts"] == 1 and not doc.get("in_flight")
    # Absent, not null: the reconciler's range query on the sparse index must not walk sent messages.
    assert "send_due" not in doc and "pending" not in doc
    assert [h["status"] for h in doc["status_history"]][:2] == ["queued", "sending"]
    created = await stack.sim_messages(to)
    assert [m["sid"] for m in created] == [doc["twilio_sid"]]
    params = created[0]["params"]
    assert params["From"] == FROM_NUMBER and params["Body"] == "hello from the worker"
    assert params["StatusCallback"] == stack.env["SMS_PUBLIC_BASE_URL"] + "/twilio/status#rc=3&rp=ct,rt,5xx"
    # The simulator's callbacks went through the bridge: Twilio's statuses are on the message.
    doc = await stack.final(message_id, {"delivered"})
    assert doc["segments"] == 1


@pytest.mark.parametrize("code", [21211, 21610, 21614])
async def test_permanent_error_fails_at_once(stack: Stack, sms: sms_pb2_grpc.SmsServiceAsyncStub, code: int) -> None:
    to = unique_number()
    user = unique_user()
    await stack.set_rules(create_errors={to: code})
    message_id = await send(sms, user, to, f"permanent {code}")
    doc = await stack.final(message_id, {"failed"})
    assert doc["error_code"] == code and doc["error_message"]
    assert doc["attempts"] == 1
    assert len(await stack.creates_to(to)) == 1
    # No retry is scheduled: the job leaves arq's queue without its score ever moving into the future.

    async def job_gone() -> bool:
        score = await stack.redis.zscore(stack.queue, message_id)
        assert score is None or score <= time.time() * 1000, "a retry was scheduled"
        return score is None

    await eventually_async(job_gone, 5, "the job to leave the queue")
    conv = await sms.GetConversation(
        sms_pb2.GetConversationRequest(conversation_id=doc["conversation_id"]), metadata=auth(user)
    )
    assert conv.conversation.opted_out is (code == 21610)
    if code == 21610:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await send(sms, user, to, "after STOP")
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("burst", ["burst_429", "burst_500"])
async def test_transient_bursts_are_retried(stack: Stack, sms: sms_pb2_grpc.SmsServiceAsyncStub, burst: str) -> None:
    to = unique_number()
    await stack.set_rules(**{burst: 2})
    message_id = await send(sms, unique_user(), to, f"through {burst}")
    doc = await stack.final(message_id, {"sent", "delivered"})
    creates = await stack.creates_to(to)
    assert [c["status"] for c in creates] == [429, 429, 201] if burst == "burst_429" else [500, 500, 201]
    assert doc["attempts"] == 3
    assert len(await stack.sim_messages(to)) == 1


async def test_transient_errors_exhaust_tries_and_keep_the_last_error(
    stack: Stack, sms: sms_pb2_grpc.SmsServiceAsyncStub
) -> None:
    to = unique_number()
    await stack.set_rules(burst_429=5)
    message_id = await send(sms, unique_user(), to, "never gets through")
    doc = await stack.final(message_id, {"failed"})
    assert doc["error_code"] == 20429 and doc["attempts"] == 3
    assert len(await stack.creates_to(to)) == 3
    assert await stack.sim_messages(to) == []


async def test_100_concurrent_sends_from_20_users(stack: Stack, sms: sms_pb2_grpc.SmsServiceAsyncStub) -> None:
    users = [(unique_user(), unique_number()) for _ in range(20)]
    jobs = [send(sms, user, to, f"{user} message {i}") for user, to in users for i in range(5)]
    ids = await asyncio.gather(*jobs)
    assert len(set(ids)) == 100
    numbers = [to for _, to in users]

    async def finals() -> int:
        return int(await stack.db.messages.count_documents({"to": {"$in": numbers}, "status": {"$in": sorted(FINAL)}}))

    await eventually_async(finals, 60, "100 messages to reach a final status", until=lambda n: n == 100, interval=0.25)
    created = [m for m in await stack.sim_messages() if m["to"] in numbers]
    pairs = Counter((m["to"], m["body"]) for m in created)
    assert len(created) == 100 and max(pairs.values()) == 1
    docs = await stack.db.messages.find({"to": {"$in": numbers}}).to_list()
    assert {d["twilio_sid"] for d in docs} == {m["sid"] for m in created}
    assert all(d["status"] == "delivered" and d["attempts"] == 1 for d in docs)


async def test_queue_stats_move(stack: Stack, sms: sms_pb2_grpc.SmsServiceAsyncStub) -> None:
    before = await sms.GetQueueStats(sms_pb2.GetQueueStatsRequest(), metadata=ADMIN)
    assert before.worker_healthy and "j_complete=" in before.worker_health
    stack.stop_worker()
    stopped = await sms.GetQueueStats(sms_pb2.GetQueueStatsRequest(), metadata=ADMIN)
    assert not stopped.worker_healthy  # arq deletes its key on a clean stop
    user, to = unique_user(), unique_number()
    ids = [await send(sms, user, to, f"stats {i}") for i in range(3)]
    waiting = await sms.GetQueueStats(sms_pb2.GetQueueStatsRequest(), metadata=ADMIN)
    assert waiting.queued == stopped.queued + 3
    assert waiting.queue_length == stopped.queue_length + 3
    assert waiting.oldest_queued_age.ToTimedelta() > timedelta(0)
    bad = unique_number()
    await stack.set_rules(create_errors={bad: 21211})
    await stack.start_worker()
    for message_id in ids:
        await stack.final(message_id, {"sent", "delivered"})
    await stack.final(await send(sms, unique_user(), bad, "stats failure"), {"failed"})

    # arq removes a finished job a moment after the job's last write.
    after = await eventually_async(
        lambda: sms.GetQueueStats(sms_pb2.GetQueueStatsRequest(), metadata=ADMIN),
        5,
        "the queue to drain",
        until=lambda stats: stats.queue_length == stopped.queue_length,
    )
    assert after.queued == stopped.queued and after.in_progress == 0 and after.retrying == 0
    # Sliding windows: earlier tests' sends may have left the last minute meanwhile, hardly the last hour.
    assert after.sent_last_minute >= 3
    assert after.sent_last_hour >= before.sent_last_hour + 3
    assert after.sent_last_hour >= after.sent_last_minute
    assert after.failed_last_hour == stopped.failed_last_hour + 1
    assert after.worker_healthy
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sms.GetQueueStats(sms_pb2.GetQueueStatsRequest(), metadata=auth(user))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_sync_from_twilio_creates_a_missed_inbound(stack: Stack, sms: sms_pb2_grpc.SmsServiceAsyncStub) -> None:
    contact = unique_number()
    injected = await stack.sim(
        "POST", "/_sim/inbound", json={"from": contact, "body": "never webhooked", "deliver": False}
    )
    sid = injected["sid"]
    assert await stack.db.messages.find_one({"twilio_sid": sid}) is None
    start = Timestamp()
    start.FromDatetime(datetime.now(UTC) - timedelta(minutes=1))
    first = await sms.SyncFromTwilio(sms_pb2.SyncFromTwilioRequest(start_time=start), metadata=ADMIN)
    assert first.created == 1 and first.scanned >= 1
    doc = await stack.db.messages.find_one({"twilio_sid": sid})
    assert doc is not None and doc["direction"] == "inbound" and doc["body"] == "never webhooked"
    assert doc["from"] == contact and doc["status"] == "received"
    again = await sms.SyncFromTwilio(sms_pb2.SyncFromTwilioRequest(start_time=start), metadata=ADMIN)
    assert again.created == 0 and again.scanned >= first.scanned
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sms.SyncFromTwilio(sms_pb2.SyncFromTwilioRequest(), metadata=ADMIN)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_sigterm_lets_running_sends_finish(stack: Stack, sms: sms_pb2_grpc.SmsServiceAsyncStub) -> None:
    await stack.set_rules(latency_ms=600)
    user, to = unique_user(), unique_number()
    ids = [await send(sms, user, to, f"graceful {i}") for i in range(5)]

    async def in_flight() -> int:
        return int(
            await stack.db.messages.count_documents(
                {"to": to, "in_flight": {"$ne": None}, "twilio_sid": {"$exists": False}}
            )
        )

    await eventually_async(in_flight, 10, "sends in flight")
    assert stack.stop_worker(signal.SIGTERM) == 0
    # Every send that was running finished: nothing is left in flight without a sid.
    assert await in_flight() == 0
    await stack.start_worker()
    for message_id in ids:
        await stack.final(message_id, {"sent", "delivered"})
    assert Counter(m["body"] for m in await stack.sim_messages(to)) == {f"graceful {i}": 1 for i in range(5)}


async def test_sigkill_mid_batch_sends_each_message_once(stack: Stack, sms: sms_pb2_grpc.SmsServiceAsyncStub) -> None:
    stack.stop_worker()
    await stack.set_rules(latency_ms=300)
    short = {"SMS_JOB_TIMEOUT_SECONDS": SHORT_JOB_TIMEOUT}
    await stack.start_worker(**short)
    users = [(unique_user(), unique_number()) for _ in range(5)]
    numbers = [to for _, to in users]
    ids = await asyncio.gather(*[send(sms, user, to, f"batch {user} {i}") for user, to in users for i in range(10)])

    async def reached_twilio() -> int:
        return len([m for m in await stack.sim_messages() if m["to"] in numbers])

    await eventually_async(reached_twilio, 20, "part of the batch to reach Twilio", until=lambda n: n >= 10)
    stack.stop_worker(signal.SIGKILL)
    stranded = await stack.db.messages.count_documents({"to": {"$in": numbers}, "in_flight": {"$ne": None}})
    assert stranded > 0, "the kill should leave attempts in flight"
    await stack.start_worker(**short)

    async def with_sids() -> int:
        return int(await stack.db.messages.count_documents({"to": {"$in": numbers}, "twilio_sid": {"$type": "string"}}))

    await eventually_async(
        with_sids, 90, "every message of the batch to have a sid", until=lambda n: n == len(ids), interval=0.25
    )
    created = [m for m in await stack.sim_messages() if m["to"] in numbers]
    pairs = Counter((m["to"], m["body"]) for m in created)
    assert len(created) == len(ids) and max(pairs.values()) == 1
    docs = await stack.db.messages.find({"to": {"$in": numbers}}).to_list()
    assert {d["twilio_sid"] for d in docs} == {m["sid"] for m in created}
    stack.stop_worker()
    await stack.set_rules()
    await stack.start_worker()


async def test_attempt_in_flight_is_settled_with_twilio_before_sending_again(
    stack: Stack, sms: sms_pb2_grpc.SmsServiceAsyncStub
) -> None:
    """The state a worker killed mid-request leaves: adopt what reached Twilio, send what did not, once."""
    user, to = unique_user(), unique_number()
    first = await send(sms, user, to, "same text")
    first_sid = (await stack.final(first, {"sent", "delivered"}))["twilio_sid"]
    stack.stop_worker()
    lost = await send(sms, user, to, "same text")  # its request never reached Twilio
    reached = await send(sms, user, to, "adopt me")  # its request did; the sid was never stored
    attempt_at = datetime.now(UTC) - timedelta(seconds=1)
    assert stack.http is not None
    async with stack.http.post(
        f"{stack.sim_url}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json",
        data={"To": to, "From": FROM_NUMBER, "Body": "adopt me"},
        headers={"Authorization": aiohttp.encode_basic_auth(ACCOUNT_SID, AUTH_TOKEN)},
    ) as resp:
        assert resp.status == 201
        reached_sid = (await resp.json())["sid"]
    from bson import ObjectId

    for message_id in (lost, reached):
        await stack.db.messages.update_one(
            {"_id": ObjectId(message_id)},
            {
                "$set": {"status": "sending", "attempts": 1, "in_flight": {"at": attempt_at, "attempt": 1}},
                "$push": {"status_history": {"status": "sending", "time": attempt_at, "applied": True}},
            },
        )
    await stack.start_worker()
    adopted = await stack.final(reached, {"sent", "delivered"})
    assert adopted["twilio_sid"] == reached_sid and adopted["attempts"] == 1
    resent = await stack.final(lost, {"sent", "delivered"})
    assert resent["twilio_sid"] not in (first_sid, reached_sid) and resent["attempts"] == 2
    bodies = Counter(m["body"] for m in await stack.sim_messages(to))
    assert bodies == {"same text": 2, "adopt me": 1}


async def test_reconciler_and_periodic_sync(stack: Stack, sms: sms_pb2_grpc.SmsServiceAsyncStub) -> None:
    """A QUEUED message whose job was lost is re-enqueued; an inbound the webhook missed is synced in."""
    stack.stop_worker()
    user, to = unique_user(), unique_number()
    orphan = await send(sms, user, to, "job lost")
    # What a Redis failure after the insert leaves: the message stored, no job for it.
    assert await stack.redis.zrem(stack.queue, orphan) == 1
    await stack.redis.delete(f"arq:job:{orphan}")
    # What a server crash right after the insert leaves: `pending` set (long ago), the count not applied.
    from bson import ObjectId

    stored = await stack.db.messages.find_one({"_id": ObjectId(orphan)})
    await stack.db.messages.update_one(
        {"_id": ObjectId(orphan)}, {"$set": {"pending": datetime.now(UTC) - timedelta(minutes=5)}}
    )
    await stack.db.conversations.update_one({"_id": stored["conversation_id"]}, {"$inc": {"message_count": -1}})
    contact = unique_number()
    injected = await stack.sim(
        "POST", "/_sim/inbound", json={"from": contact, "body": "synced later", "deliver": False}
    )
    await stack.start_worker(SMS_RECONCILE_AGE_SECONDS="1", SMS_SYNC_INTERVAL_SECONDS="1")
    doc = await stack.final(orphan, {"sent", "delivered"})
    assert doc["attempts"] == 1 and len(await stack.creates_to(to)) == 1
    assert "pending" not in doc
    conv = await stack.db.conversations.find_one({"_id": stored["conversation_id"]})
    assert conv["message_count"] == 1

    inbound = await eventually_async(
        lambda: stack.db.messages.find_one({"twilio_sid": injected["sid"]}),
        15,
        "the periodic sync to store the missed inbound",
    )
    assert inbound["body"] == "synced later" and inbound["direction"] == "inbound"
    stack.stop_worker()
    await stack.start_worker()


def test_missing_settings_stop_the_worker(stack_env: dict[str, str]) -> None:
    env = {
        k: v
        for k, v in stack_env.items()
        if k not in ("TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TWILIO_FROM_NUMBER", "MONGODB_URI", "REDIS_URL")
    }
    done = subprocess.run([*SMS_GATEWAY, "worker"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done.stderr
    for name in (
        "TWILIO_ACCOUNT_SID",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_FROM_NUMBER",
        "TWILIO_MESSAGING_SERVICE_SID",
        "MONGODB_URI",
        "REDIS_URL",
    ):
        assert name in done.stderr
    assert AUTH_TOKEN not in done.stderr + done.stdout
