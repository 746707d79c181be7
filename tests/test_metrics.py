"""Prometheus metrics: a real server, worker and bridge (and the Twilio simulator) scraped after some traffic.

Each process serves its metrics on its own SMS_METRICS_ADDR. The checks: the expected names exist with sane
values, the gRPC codes are the ones the calls really ended with, and no label carries an unbounded value (a phone
number, a sid, a message id).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import aiohttp
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from sms.v1 import sms_pb2, sms_pb2_grpc

from server.embedded import free_port
from server.timeutil import now
from server.worker.metrics import OUTCOMES, job_outcome, retry_reason
from server.worker.twilio_client import TwilioFailure, request_operation
from tests.support.identities import auth, bridge_env, unique_number, unique_user
from tests.support.launch import start_listening, start_server, start_worker
from tests.support.polling import eventually_async
from tests.support.processes import SMS_GATEWAY, ChildProcess

SENDS = 3
SMS = "sms.v1.SmsService"
INGEST = "sms.v1.SmsIngestService"
Series = dict[tuple[str, frozenset[tuple[str, str]]], float]

# What no label value may look like: an E.164 or bare phone number, a 24-hex ObjectId, a Twilio sid, a uuid.
UNBOUNDED = (
    re.compile(r"\+?\d{7,}"),
    re.compile(r"[0-9a-f]{24}"),
    re.compile(r"\b(SM|MM|AC|MG|PN)[0-9a-fA-F]{32}\b"),
    re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-"),
)
# Every label of our own metrics and the values it may take (None: checked by UNBOUNDED and length only).
ALLOWED: dict[str, set[str] | None] = {
    "grpc_type": {"unary", "server_stream"},
    "grpc_service": {SMS, INGEST},
    "grpc_method": None,  # method names: bounded by the proto
    "grpc_code": {c.name for c in grpc.StatusCode},
    "reason": None,
    "outcome": None,
    "result": None,
    "operation": {"create", "list", "fetch", "other"},
    "stage": None,  # sms_store_commands_total: gRPC method names and the worker's fixed job words
    "status": None,
    "route": {"inbound", "status"},
    "method": {"RecordInbound", "RecordStatus"},
    "cause": None,
}


def parse(text: str) -> Series:
    """Every sample of an exposition, by name and label set."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(series: Series, name: str, **labels: str) -> float:
    """One series' value (0 when absent)."""
    return series.get((name, frozenset(labels.items())), 0.0)


def total(series: Series, name: str, **labels: str) -> float:
    """The sum over every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in series.items() if n == name and wanted <= ls)


@dataclass
class Stack:
    """The processes under test and where each serves its metrics."""

    grpc_addr: str
    bridge_url: str
    metrics: dict[str, str]  # process -> URL
    procs: list[ChildProcess]
    http: aiohttp.ClientSession

    async def scrape(self, process: str) -> tuple[str, Series]:
        async with self.http.get(self.metrics[process]) as resp:
            assert resp.status == 200, process
            assert resp.headers["Content-Type"].startswith("text/plain"), process
            text = await resp.text()
        return text, parse(text)


@pytest.fixture(scope="module")
async def stack(base_env: dict[str, str]) -> AsyncIterator[Stack]:
    sim_port, bridge_port = free_port(), free_port()
    ports = {name: free_port() for name in ("server", "worker", "bridge")}
    env = {
        **base_env,
        "MONGODB_DB": f"sms_metrics_{uuid.uuid4().hex[:8]}",
        "SMS_ARQ_QUEUE": f"arq:metrics-test-{uuid.uuid4().hex[:8]}",
        "TWILIO_ACCOUNT_SID": "AC" + "2" * 32,
        "TWILIO_AUTH_TOKEN": "metrics-test-token",
        "TWILIO_API_BASE_URL": f"http://127.0.0.1:{sim_port}",
        "SMS_SIMULATOR_ADDR": f"127.0.0.1:{sim_port}",
        "SMS_BRIDGE_ADDR": f"127.0.0.1:{bridge_port}",
        "SMS_PUBLIC_BASE_URL": f"http://127.0.0.1:{bridge_port}",
        "SMS_SENDER_MPS": "100",  # pacing on, so its histogram moves; fast enough not to slow the test
        "SMS_SYNC_INTERVAL_SECONDS": "0",
        "SMS_DRAIN_SECONDS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    procs: list[ChildProcess] = []
    redis = Redis.from_url(env["REDIS_URL"])

    def metered(name: str) -> dict[str, str]:
        return {**env, "SMS_METRICS_ADDR": f"127.0.0.1:{ports[name]}"}

    try:
        procs.append(start_listening("simulator", [*SMS_GATEWAY, "twilio-simulator"], env, "127.0.0.1", sim_port))
        server, addr = start_server(metered("server"))
        procs.append(server)
        env["SMS_GRPC_TARGET"] = addr
        bridge = bridge_env(metered("bridge"))
        procs.append(start_listening("bridge", [*SMS_GATEWAY, "bridge"], bridge, "127.0.0.1", bridge_port))
        procs.append(await start_worker(metered("worker"), redis))
        async with aiohttp.ClientSession() as http:
            urls = {name: f"http://127.0.0.1:{port}/metrics" for name, port in ports.items()}
            yield Stack(addr, f"http://127.0.0.1:{bridge_port}", urls, procs, http)
    finally:
        for p in reversed(procs):
            p.stop()
        await redis.aclose()


@pytest.fixture(scope="module")
async def traffic(stack: Stack) -> None:
    """Sends, a scheduled send, failing calls and a Subscribe that the client leaves, until the sends are sent."""
    user = unique_user()
    async with grpc.aio.insecure_channel(stack.grpc_addr) as channel:
        sms = sms_pb2_grpc.SmsServiceStub(channel)
        received: list[sms_pb2.SubscribeResponse] = []

        async def watch() -> None:
            async for response in sms.Subscribe(sms_pb2.SubscribeRequest(), metadata=auth(user)):
                received.append(response)

        watcher = asyncio.create_task(watch())
        await eventually_async(lambda: len(received), 10, "the first heartbeat")
        ids = []
        for i in range(SENDS):
            resp = await sms.Send(sms_pb2.SendRequest(to=unique_number(), body=f"metrics {i}"), metadata=auth(user))
            ids.append(resp.message.id)
        later = Timestamp()
        later.FromDatetime(now() + timedelta(hours=1))
        await sms.Send(sms_pb2.SendRequest(to=unique_number(), body="later", send_at=later), metadata=auth(user))
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await sms.ListConversations(
                sms_pb2.ListConversationsRequest(), metadata=(("authorization", "Bearer not-a-token"),)
            )
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await sms.GetMessage(sms_pb2.GetMessageRequest(message_id=uuid.uuid4().hex[:24]), metadata=auth(user))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND

        async def sent() -> int:
            n = 0
            for message_id in ids:
                doc = await sms.GetMessage(sms_pb2.GetMessageRequest(message_id=message_id), metadata=auth(user))
                n += bool(doc.message.twilio_sid)
            return n

        await eventually_async(sent, 15, "the sends to reach Twilio", until=lambda n: n == SENDS)
        # Events of the sends have reached the stream; then the client goes away.
        await eventually_async(lambda: sum(r.HasField("event") for r in received), 10, "an event on the stream")
        watcher.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watcher


async def test_server_metrics(stack: Stack, traffic: None) -> None:
    async def settled() -> Series:
        return (await stack.scrape("server"))[1]

    # The cancelled stream is counted once the server has noticed the client left. Every call started is handled
    # then too, at a moment when the simulator's callbacks (RecordStatus through the bridge) have none in flight.
    s = await eventually_async(
        settled,
        10,
        "the Subscribe counted as CANCELLED and every call started handled",
        until=lambda s: (
            value(s, "sms_subscribers_open") == 0
            and total(s, "grpc_server_handled_total", grpc_method="Subscribe", grpc_code="CANCELLED") >= 1
            and total(s, "grpc_server_started_total") == total(s, "grpc_server_handled_total")
        ),
    )
    send = {"grpc_type": "unary", "grpc_service": SMS, "grpc_method": "Send"}
    assert value(s, "grpc_server_started_total", **send) >= SENDS + 1
    assert value(s, "grpc_server_handled_total", **send, grpc_code="OK") >= SENDS + 1
    assert value(s, "grpc_server_handling_seconds_count", **send) >= SENDS + 1
    assert value(s, "grpc_server_handling_seconds_sum", **send) > 0
    assert value(s, "grpc_server_msg_received_total", **send) >= SENDS + 1
    assert value(s, "grpc_server_msg_sent_total", **send) >= SENDS + 1
    assert total(s, "grpc_server_handled_total", grpc_method="ListConversations", grpc_code="UNAUTHENTICATED") >= 1
    assert total(s, "grpc_server_handled_total", grpc_method="GetMessage", grpc_code="NOT_FOUND") >= 1
    stream = {"grpc_type": "server_stream", "grpc_service": SMS, "grpc_method": "Subscribe"}
    assert value(s, "grpc_server_started_total", **stream) >= 1
    assert value(s, "grpc_server_msg_sent_total", **stream) >= 2  # a heartbeat and an event at least
    # The simulator's status callbacks, through the bridge.
    assert total(s, "grpc_server_handled_total", grpc_service=INGEST, grpc_method="RecordStatus", grpc_code="OK") >= 1
    assert value(s, "sms_events_delivered_total") >= 1
    assert 1 <= value(s, "sms_event_delivery_seconds_count")
    assert 0 < value(s, "sms_event_delivery_seconds_sum") < 10 * value(s, "sms_event_delivery_seconds_count")
    assert value(s, "process_cpu_seconds_total") > 0


async def test_worker_metrics(stack: Stack, traffic: None) -> None:
    async def scraped() -> Series:
        return (await stack.scrape("worker"))[1]

    # The backlog gauges are refreshed every 5 s.
    s = await eventually_async(
        scraped, 10, "the scheduled backlog gauge", until=lambda s: value(s, "sms_scheduled_backlog") >= 1
    )
    assert value(s, "sms_worker_jobs_total", outcome="sent") >= SENDS
    assert total(s, "sms_twilio_requests_total", operation="create") >= SENDS
    assert value(s, "sms_twilio_requests_total", operation="create", status="201") >= SENDS
    assert value(s, "sms_twilio_request_seconds_count", operation="create") >= SENDS
    assert value(s, "sms_pacing_wait_seconds_count") >= SENDS
    assert value(s, "sms_oldest_queued_age_seconds") >= 0
    assert value(s, "process_cpu_seconds_total") > 0
    assert value(s, "process_resident_memory_bytes") > 0


async def test_bridge_metrics(stack: Stack, traffic: None) -> None:
    own_port_text = await (await stack.http.get(stack.bridge_url + "/metrics")).text()
    text, s = await stack.scrape("bridge")
    assert value(s, "sms_bridge_posts_total", route="status", outcome="applied") >= 1
    assert value(s, "sms_bridge_ingest_call_seconds_count", method="RecordStatus", result="OK") >= 1
    assert value(s, "process_cpu_seconds_total") > 0
    # The bridge's own /metrics and SMS_METRICS_ADDR serve the same registry.
    assert {n for n, _ in parse(own_port_text)} == {n for n, _ in s}
    # Only the bridge's families: no gRPC server metrics registered by importing the server's module.
    assert "grpc_server_started_total" not in text


@pytest.mark.parametrize("process", ["server", "worker", "bridge"])
async def test_no_label_carries_an_unbounded_value(stack: Stack, traffic: None, process: str) -> None:
    _, s = await stack.scrape(process)
    per_family: dict[str, int] = {}
    for name, labels in s:
        per_family[name] = per_family.get(name, 0) + 1
        for label, v in labels:
            assert len(v) <= 40, (name, label, v)
            for pattern in UNBOUNDED:
                assert not pattern.search(v), (name, label, v)
            allowed = ALLOWED.get(label)
            if allowed is not None:
                assert v in allowed, (name, label, v)
            if label == "outcome" and name.startswith("sms_worker_jobs"):
                assert v in OUTCOMES, v
            if label == "status" and name.startswith("sms_twilio"):
                assert v == "error" or v == "other" or (v.isdigit() and len(v) == 3), v
    # A handful of series per family (histogram buckets included), not one per message.
    assert max(per_family.values()) < 400, max(per_family.items(), key=lambda kv: kv[1])


def test_job_words_map_to_fixed_outcomes() -> None:
    words = {
        "sent SM0123 (queued)": "sent",
        "recorded SM0123 (sent)": "sent",
        "adopted SM0123": "adopted",
        "failed on try 2: 21211: bad number": "failed",
        "failed after 3 tries": "failed",
        "failed while settling after 3 tries: x": "failed",
        "not sent: canceled": "not_sent",
        "canceled": "not_sent",
        "failed": "not_sent",  # already FAILED before this run: not a new failure
        "already sent": "already_sent",
        "no such message": "skipped",
        "something new": "other",
    }
    assert {word: job_outcome(word) for word in words} == words
    assert set(words.values()) <= set(OUTCOMES)


def test_twilio_operations_and_retry_reasons() -> None:
    base = "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages"
    assert request_operation("POST", base + ".json") == "create"
    assert request_operation("get", base + ".json?PageSize=100&Page=1&PageToken=PA1") == "list"
    assert request_operation("GET", base + "/SM0123.json") == "fetch"

    def failure(code: int, http_status: int) -> TwilioFailure:
        return TwilioFailure(code, "x", transient=True, maybe_processed=False, http_status=http_status)

    assert retry_reason(failure(20429, 429)) == "rate_limited"
    assert retry_reason(failure(21611, 400)) == "sender_queue_full"
    assert retry_reason(failure(0, 503)) == "server_error"
    assert retry_reason(failure(0, 0)) == "network"
