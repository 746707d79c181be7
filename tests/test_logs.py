"""Structured logs: the JSON and text formats, correlation fields, phone-number masking, and one message followed
through the logs of the server, the worker and the bridge as real processes."""

from __future__ import annotations

import io
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis
from sms.v1 import sms_pb2, sms_pb2_grpc, types_pb2

from server import log_context, logs
from server.embedded import free_port
from tests.support.identities import auth, bridge_env, unique_number, unique_user
from tests.support.launch import start_listening, start_server, start_worker
from tests.support.polling import eventually_async
from tests.support.processes import SMS_GATEWAY, ChildProcess
from webhook_bridge.log_context import IDEMPOTENCY_HEADER, bind_trace_id

FROM_NUMBER = "+15005550006"
HEX_ID = re.compile(r"^[0-9a-f]{16}$")  # a fresh trace id


# Unit: formats, fields, masking


@pytest.fixture
def buffer() -> Iterator[io.StringIO]:
    """A buffer for the test to configure logging onto; the root logger is restored afterwards."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield io.StringIO()
    for h in root.handlers:
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line]


def test_json_lines_carry_the_bound_fields(buffer: io.StringIO) -> None:
    logs.configure("json", stream=buffer)
    log = logging.getLogger("tests.logs")
    with log_context.bind(message_id="m1", grpc_method="/sms.v1.SmsService/Send"):
        with log_context.bind(twilio_sid="SM" + "a" * 32, request_id=None):
            log.info("inner %d", 1)
        log.warning("outer")
    log.info("outside")
    inner, outer, outside = _json_lines(buffer.getvalue())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", inner["time"])
    assert inner["level"] == "INFO" and inner["logger"] == "tests.logs" and inner["message"] == "inner 1"
    assert inner["message_id"] == "m1" and inner["twilio_sid"] == "SM" + "a" * 32
    assert inner["grpc_method"] == "/sms.v1.SmsService/Send" and "request_id" not in inner
    assert outer["level"] == "WARNING" and "twilio_sid" not in outer and outer["message_id"] == "m1"
    assert set(outside) == {"time", "level", "logger", "message"}
    assert log_context.current() == {}


def test_exceptions_are_serialised_masked(buffer: io.StringIO) -> None:
    logs.configure("json", stream=buffer)
    try:
        raise ValueError("Twilio refused +14155550123")
    except ValueError:
        logging.getLogger("tests.logs").exception("create failed")
    (line,) = _json_lines(buffer.getvalue())
    assert line["message"] == "create failed"
    assert "Traceback" in line["exception"] and "ValueError: Twilio refused +*******0123" in line["exception"]


def test_phone_numbers_are_masked_in_message_and_args(buffer: io.StringIO) -> None:
    logs.configure("json", stream=buffer)
    log = logging.getLogger("tests.logs")
    oid, sid = "6931234567890123456789ab", "SM1234567890123456789012345678ab"
    log.info("to +14155550123 from %s", "+15005550006")
    log.info("call %s or %d now", "4155550199", 16285550100)
    log.info("ids %s %s stay; short 555-0100 stays", oid, sid)
    log.info("failure: %s", ValueError("21211 Invalid 'To' Phone Number: +447700900123"))
    lines = [entry["message"] for entry in _json_lines(buffer.getvalue())]
    assert lines == [
        "to +*******0123 from +*******0006",
        "call ******0199 or *******0100 now",
        f"ids {oid} {sid} stay; short 555-0100 stays",
        "failure: 21211 Invalid 'To' Phone Number: +********0123",
    ]
    assert logs.mask("+1234567890123456789") == "+" + "*" * 15 + "6789"  # over E.164's length: still a run


def test_masking_keeps_the_template_of_a_clean_record() -> None:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "sent %s to %s", ("x", "+14155550123"), None)
    assert logs.MaskPhoneNumbers().filter(record)
    assert record.getMessage() == "sent x to +*******0123"
    clean = logging.LogRecord("t", logging.INFO, __file__, 1, "sent %s", ("x",), None)
    logs.MaskPhoneNumbers().filter(clean)
    assert (clean.msg, clean.args) == ("sent %s", ("x",))


def test_text_format_appends_only_the_fields_that_are_set(buffer: io.StringIO) -> None:
    logs.configure("text", stream=buffer)
    log = logging.getLogger("tests.logs")
    log.info("plain")
    with log_context.bind(message_id="m2", grpc_method="Send"):
        log.info("bound to %s", "+14155550123")
    plain, bound = buffer.getvalue().splitlines()
    assert plain.endswith(" INFO tests.logs: plain")
    assert bound.endswith(" INFO tests.logs: bound to +*******0123 [message_id=m2 grpc_method=Send]")


def test_configure_replaces_its_own_handler_only(buffer: io.StringIO) -> None:
    before = len(logging.getLogger().handlers)
    logs.configure("text", stream=io.StringIO())
    logs.configure("json", stream=buffer)
    assert len(logging.getLogger().handlers) == before + 1
    with pytest.raises(ValueError):
        logs.configure("xml")


def test_for_call_binds_method_and_a_bounded_trace_id() -> None:
    with log_context.for_call("/sms.v1.SmsService/Send", (("authorization", "x"), ("x-request-id", "req-42"))):
        assert log_context.current() == {"grpc_method": "/sms.v1.SmsService/Send", "trace_id": "req-42"}
    assert log_context.current() == {}
    for bad in ("x" * 129, "has space", "caf\u00e9", "", b"bytes"):
        with log_context.for_call("M", (("x-request-id", bad),)):
            assert HEX_ID.match(log_context.current()["trace_id"]), bad
    with log_context.for_call("M", None):
        assert HEX_ID.match(log_context.current()["trace_id"])
    with log_context.for_call("M", (("x-request-id", "y" * 128),)):
        assert log_context.current()["trace_id"] == "y" * 128
    with pytest.raises(TypeError):
        log_context.bind(nonsense="x").__enter__()


def test_add_lasts_until_the_enclosing_bind_ends() -> None:
    with log_context.bind(message_id="m3"):
        log_context.add(twilio_sid="SMabc")
        assert log_context.current() == {"message_id": "m3", "twilio_sid": "SMabc"}
    assert log_context.current() == {}


async def test_bridge_middleware_binds_the_idempotency_token() -> None:
    async def fields(_: web.Request) -> web.Response:
        return web.json_response(log_context.current())

    app = web.Application(middlewares=[bind_trace_id])
    app.router.add_get("/", fields)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/", headers={IDEMPOTENCY_HEADER: "tok-1"})
        assert await resp.json() == {"trace_id": "tok-1"}
        resp = await client.get("/", headers={IDEMPOTENCY_HEADER: "t" * 129})
        assert HEX_ID.match((await resp.json())["trace_id"])
        resp = await client.get("/")
        assert HEX_ID.match((await resp.json())["trace_id"])
    assert log_context.current() == {}


# End to end: one message through the server, the worker, the simulator and the bridge


@pytest.fixture
async def json_stack(base_env: dict[str, str]) -> AsyncIterator[tuple[dict[str, str], dict[str, ChildProcess]]]:
    """The four processes with SMS_LOG_FORMAT=json, own database and queue; yields the env and them by name."""
    sim_port, bridge_port = free_port(), free_port()
    env = {
        **base_env,
        "SMS_LOG_FORMAT": "json",
        "MONGODB_DB": f"sms_logs_{uuid.uuid4().hex[:8]}",
        "SMS_ARQ_QUEUE": f"arq:logs-test-{uuid.uuid4().hex[:8]}",
        "TWILIO_ACCOUNT_SID": "AC" + "2" * 32,
        "TWILIO_AUTH_TOKEN": "logs-test-token",
        "TWILIO_FROM_NUMBER": FROM_NUMBER,
        "TWILIO_API_BASE_URL": f"http://127.0.0.1:{sim_port}",
        "SMS_SIMULATOR_ADDR": f"127.0.0.1:{sim_port}",
        "SMS_BRIDGE_ADDR": f"127.0.0.1:{bridge_port}",
        "SMS_PUBLIC_BASE_URL": f"http://127.0.0.1:{bridge_port}",
        "SMS_HEALTH_CHECK_INTERVAL_SECONDS": "1",
        "SMS_SYNC_INTERVAL_SECONDS": "0",
        "SMS_DRAIN_SECONDS": "1",
        "PYTHONUNBUFFERED": "1",
    }
    procs: dict[str, ChildProcess] = {}
    redis = Redis.from_url(env["REDIS_URL"])
    try:
        sim = [*SMS_GATEWAY, "twilio-simulator"]
        procs["simulator"] = start_listening("simulator", sim, env, "127.0.0.1", sim_port)
        procs["server"], addr = start_server(env)
        env["SMS_GRPC_TARGET"] = env["SMS_GRPC_ADDR"] = addr
        bridge = [*SMS_GATEWAY, "bridge"]
        procs["bridge"] = start_listening("bridge", bridge, bridge_env(env), "127.0.0.1", bridge_port)
        procs["worker"] = await start_worker(env, redis)
        yield env, procs
    finally:
        for proc in reversed(procs.values()):
            proc.stop()
        await redis.aclose()


def _parsed(proc: ChildProcess) -> list[dict[str, Any]]:
    """Every line of the process's log as JSON (a line that does not parse fails the test, naming it)."""
    entries = []
    for line in proc.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            pytest.fail(f"{proc.name}: not a JSON line: {line!r}")
        assert isinstance(entry, dict) and {"time", "level", "logger", "message"} <= set(entry), line
        entries.append(entry)
    return entries


async def test_one_message_followed_through_the_json_logs(
    json_stack: tuple[dict[str, str], dict[str, ChildProcess]],
) -> None:
    env, procs = json_stack
    marker = f"secret-body-{uuid.uuid4().hex}"
    to = unique_number()
    async with grpc.aio.insecure_channel(env["SMS_GRPC_ADDR"]) as channel:
        sms = sms_pb2_grpc.SmsServiceStub(channel)
        user = auth(unique_user())
        sent = await sms.Send(sms_pb2.SendRequest(to=to, body=f"{marker} for {to}"), metadata=user)
        message_id = sent.message.id

        async def status() -> int:
            resp = await sms.GetMessage(sms_pb2.GetMessageRequest(message_id=message_id), metadata=user)
            return int(resp.message.status)

        await eventually_async(
            status, 15, "the message to be delivered", until=lambda s: s == types_pb2.MESSAGE_STATUS_DELIVERED
        )
        got = await sms.GetMessage(sms_pb2.GetMessageRequest(message_id=message_id), metadata=user)
        twilio_sid = got.message.twilio_sid

    def bridge_has_it() -> bool:
        return any(e.get("message_id") == message_id for e in _parsed(procs["bridge"]))

    # The bridge logs a post once the server answered it, after the status is stored: wait for its line.
    await eventually_async(bridge_has_it, 5, "the bridge's line of the delivered callback")
    for proc in reversed(procs.values()):
        proc.stop()  # every line written, shutdown lines included, before the logs are read

    entries = {name: _parsed(proc) for name, proc in procs.items() if name != "simulator"}
    for name, proc in procs.items():
        text = proc.log()
        assert marker not in text, f"the body is in the {name}'s log"
        for number in (to, FROM_NUMBER):
            assert number[1:] not in text, f"{number} is in the {name}'s log"
    for name in ("server", "worker", "bridge"):
        ours = [e for e in entries[name] if e.get("message_id") == message_id]
        assert ours, f"no {name} line carries message_id {message_id}"
    worker_lines = [e for e in entries["worker"] if e.get("message_id") == message_id]
    assert any(e.get("twilio_sid") == twilio_sid for e in worker_lines), worker_lines

    # The status callbacks: the bridge's trace id (Twilio's idempotency token) reached the server's lines.
    bridge_lines = [e for e in entries["bridge"] if e.get("message_id") == message_id]
    assert all(e.get("twilio_sid") == twilio_sid and e.get("trace_id") for e in bridge_lines), bridge_lines
    server_lines = [e for e in entries["server"] if e.get("twilio_sid") == twilio_sid]
    assert server_lines and all(e.get("message_id") == message_id for e in server_lines), server_lines
    assert all(e.get("grpc_method", "").endswith("RecordStatus") for e in server_lines), (
        "server/edge.py does not bind the call yet (log_context.for_call)",
        server_lines,
    )
    assert {e["trace_id"] for e in server_lines} == {e["trace_id"] for e in bridge_lines}
