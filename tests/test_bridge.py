"""The webhook bridge: signatures, form conversion, and end to end against real server and bridge processes."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import grpc
import pytest
from bson import ObjectId
from prometheus_client import CollectorRegistry
from sms.v1 import sms_pb2, sms_pb2_grpc
from twilio.request_validator import RequestValidator

from server.documents import params_of
from server.embedded import free_port
from tests.support.bridge import (
    OUR_NUMBER,
    PUBLIC_BASE,
    Bridge,
    healthz,
    inbound_params,
    metric,
    new_sid,
    post,
    start_bridge,
    status_params,
)
from tests.support.identities import auth, unique_number
from tests.support.launch import start_server
from tests.support.polling import eventually_async
from tests.support.processes import SMS_GATEWAY, ChildProcess
from webhook_bridge.app import EMPTY_TWIML
from webhook_bridge.forms import FormError, inbound_request, parse_dlr_date, parse_form, status_request
from webhook_bridge.metrics import BridgeMetrics
from webhook_bridge.signature import SignatureVerifier, Verdict, compute_signature

# ---------------------------------------------------------------------------------------------------------
# Unit level: signature, forms, metrics


def test_twilio_signature_test_vector() -> None:
    params = {
        "CallSid": "CA1234567890ABCDE",
        "Digits": "1234",
        "From": "+14158675309",
        "To": "+18005551212",
        "Caller": "+14158675309",
    }
    expected = "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert compute_signature("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", params) == expected
    verifier = SignatureVerifier("12345", "https://mycompany.com")
    assert verifier.verify("/myapp.php?foo=1&bar=2", params, expected) is Verdict.VALID
    # Twilio may or may not have included the default port; both forms verify.
    assert (
        SignatureVerifier("12345", "https://mycompany.com:443").verify("/myapp.php?foo=1&bar=2", params, expected)
        is Verdict.VALID
    )
    assert verifier.verify("/myapp.php?foo=1&bar=3", params, expected) is Verdict.INVALID
    assert verifier.verify("/myapp.php?foo=1&bar=2", {**params, "Digits": "1235"}, expected) is Verdict.INVALID
    assert (
        SignatureVerifier("54321", "https://mycompany.com").verify("/myapp.php?foo=1&bar=2", params, expected)
        is Verdict.INVALID
    )
    assert verifier.verify("/myapp.php?foo=1&bar=2", params, None) is Verdict.MISSING
    assert verifier.verify("/myapp.php?foo=1&bar=2", params, "") is Verdict.MISSING


@pytest.mark.parametrize(
    "base", ["https://a.example", "https://a.example:443", "http://a.example:8080/x", "https://a.example:8443/p/"]
)
def test_verifier_agrees_with_request_validator(base: str) -> None:
    rng = random.Random(base)
    signers = [
        base,
        base.replace(":443", ""),
        base.replace("https://a.example", "https://a.example:443"),
        "https://b.example",
    ]
    for _ in range(200):
        params = {f"{rng.choice('ABC')}{i}": "".join(rng.choices("ab +%&=é", k=4)) for i in range(rng.randint(0, 4))}
        path = "/twilio/inbound" + rng.choice(["", "?a=1&b=2", "?x=%20y"])
        sig = RequestValidator("tok").compute_signature(rng.choice(signers).rstrip("/") + path, params)
        if rng.random() < 0.2:
            sig = sig[:-3] + "AA="
        expected = RequestValidator("tok").validate(base.rstrip("/") + path, params, sig)
        assert (SignatureVerifier("tok", base).verify(path, params, sig) is Verdict.VALID) == expected


def test_verifier_refuses_an_empty_token() -> None:
    with pytest.raises(ValueError):
        SignatureVerifier("", PUBLIC_BASE)


def test_inbound_form_keeps_media_and_unknown_parameters() -> None:
    form = parse_form(
        b"MessageSid=MM1&AccountSid=AC1&From=%2B14155550100&To=%2B15005550006&Body=hi+there%21&NumMedia=2"
        b"&MediaUrl1=https%3A%2F%2Fm.example%2F1&MediaContentType1=image%2Fpng"
        b"&MediaUrl0=https%3A%2F%2Fm.example%2F0&MediaContentType0=image%2Fjpeg"
        b"&NumSegments=1&FromCity=SAN+FRANCISCO&ApiVersion=2010-04-01&SomethingNew=42&Empty="
    )
    req = inbound_request(form)
    assert (req.message_sid, req.account_sid, req.from_number, req.to_number) == (
        "MM1",
        "AC1",
        "+14155550100",
        "+15005550006",
    )
    assert req.body == "hi there!"
    assert [(m.url, m.content_type) for m in req.media] == [
        ("https://m.example/0", "image/jpeg"),
        ("https://m.example/1", "image/png"),
    ]
    assert req.num_segments == 1
    assert dict(req.params) == {
        "FromCity": "SAN FRANCISCO",
        "ApiVersion": "2010-04-01",
        "SomethingNew": "42",
        "Empty": "",
    }


def test_inbound_form_keeps_malformed_numbers_instead_of_failing() -> None:
    req = inbound_request(parse_form(b"MessageSid=SM1&From=a&To=b&NumSegments=x&NumMedia=3"))
    assert req.num_segments == 0
    assert req.params["NumSegments"] == "x"
    assert req.params["NumMedia"] == "3"  # three announced, none found: Twilio's count is kept


def test_status_form_parses_dlr_date_else_now() -> None:
    form = parse_form(
        b"MessageSid=SM1&MessageStatus=undelivered&ErrorCode=30003&RawDlrDoneDate=2408240501&SmsStatus=undelivered"
    )
    req = status_request(form)
    assert (req.message_sid, req.message_status, req.error_code) == ("SM1", "undelivered", 30003)
    assert req.status_time.ToDatetime(tzinfo=UTC) == datetime(2024, 8, 24, 5, 1, tzinfo=UTC)
    assert req.params["SmsStatus"] == "undelivered"
    assert req.params["RawDlrDoneDate"] == "2408240501"
    before = datetime.now(UTC)
    late = status_request(parse_form(b"MessageSid=SM1&MessageStatus=sent&RawDlrDoneDate=2413999999"))
    assert before <= late.status_time.ToDatetime(tzinfo=UTC) <= datetime.now(UTC)
    assert parse_dlr_date("24082405") is None


@pytest.mark.parametrize("body", [b"\xff\xfe", b"not a form", b"a=1&&b"])
def test_unparsable_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(FormError):
        parse_form(body)


@pytest.mark.parametrize(
    ("body", "convert"),
    [
        (b"From=%2B1&To=%2B2", inbound_request),
        (b"MessageSid=SM1&From=%2B1", inbound_request),
        (b"MessageSid=SM1", status_request),
        (b"MessageStatus=sent", status_request),
    ],
)
def test_required_parameters(body: bytes, convert: Callable[[Any], object]) -> None:
    with pytest.raises(FormError):
        convert(parse_form(body))


def test_metrics_exposition() -> None:
    # A registry of its own: the default one is shared by every bridge app built in this process. prometheus_client
    # writes every value as a float ("2.0") and the labels sorted by name (`le` too), where the hand-written
    # exposition wrote integers ("2") and the labels in their declared order.
    m = BridgeMetrics(CollectorRegistry())
    m.posts.inc("inbound", "stored")
    m.posts.inc("inbound", "stored")
    m.ingest_latency.observe(0.003, "RecordInbound", "OK")
    m.ingest_latency.observe(20.0, "RecordInbound", "OK")
    text = m.render()
    assert 'sms_bridge_posts_total{outcome="stored",route="inbound"} 2.0' in text
    assert 'sms_bridge_ingest_call_seconds_bucket{le="0.0025",method="RecordInbound",result="OK"} 0.0' in text
    assert 'sms_bridge_ingest_call_seconds_bucket{le="0.005",method="RecordInbound",result="OK"} 1.0' in text
    assert 'sms_bridge_ingest_call_seconds_bucket{le="+Inf",method="RecordInbound",result="OK"} 2.0' in text
    assert 'sms_bridge_ingest_call_seconds_count{method="RecordInbound",result="OK"} 2.0' in text


# ---------------------------------------------------------------------------------------------------------
# End to end: a real bridge process in front of a real server process


@pytest.fixture(scope="module")
def bridge(base_env: dict[str, str], grpc_server: str) -> Iterator[Bridge]:
    b = start_bridge(base_env, grpc_server)
    yield b
    assert b.proc.stop() == 0, b.proc.log()[-3000:]


async def test_inbound_creates_conversation_and_message(http: aiohttp.ClientSession, bridge: Bridge, db: Any) -> None:
    sid, contact = new_sid(), unique_number()
    answer = await post(http, bridge, "/twilio/inbound", inbound_params(sid, contact, "Hi from the test"))
    assert answer.status == 200, answer.text
    assert answer.text == EMPTY_TWIML
    assert answer.headers["Content-Type"].startswith("text/xml")
    msg = await db.messages.find_one({"twilio_sid": sid})
    assert msg is not None
    assert (msg["direction"], msg["from"], msg["to"], msg["body"]) == (
        "inbound",
        contact,
        OUR_NUMBER,
        "Hi from the test",
    )
    assert params_of(msg)["FromCity"] == "SAN FRANCISCO"
    assert params_of(msg)["ApiVersion"] == "2010-04-01"
    conv = await db.conversations.find_one({"_id": msg["conversation_id"]})
    assert conv is not None
    assert (conv["contact_number"], conv["unread_count"], conv["opted_out"]) == (contact, 1, False)


@pytest.mark.parametrize("tamper", ["changed_param", "wrong_token", "other_url", "no_header", "added_param"])
async def test_bad_signature_is_refused_and_nothing_stored(
    http: aiohttp.ClientSession, bridge: Bridge, db: Any, tamper: str
) -> None:
    sid = new_sid()
    params = inbound_params(sid, unique_number())
    path = "/twilio/inbound"
    headers = {
        "changed_param": bridge.signed(path, {**params, "Body": "something else"}),
        "wrong_token": bridge.signed(path, params, token="not-the-token"),
        "other_url": bridge.signed(path, params, public_base="https://evil.example.test/hooks"),
        "no_header": {},
        "added_param": bridge.signed(path, params),
    }[tamper]
    if tamper == "added_param":
        params["Extra"] = "1"
    reason = "missing" if tamper == "no_header" else "invalid"
    series = f'sms_bridge_signature_failures_total{{route="inbound",reason="{reason}"}}'
    before = await metric(http, bridge, series)
    answer = await post(http, bridge, path, params, headers=headers)
    assert answer.status == 403
    assert await db.messages.count_documents({"twilio_sid": sid}) == 0
    assert await metric(http, bridge, series) == before + 1
    # The refusal is logged, without the body.
    await eventually_async(lambda: f"{reason} X-Twilio-Signature" in bridge.proc.log(), 15, "the refusal logged")
    assert "hello" not in bridge.proc.log()


async def test_status_signature_is_checked_too(http: aiohttp.ClientSession, bridge: Bridge) -> None:
    params = status_params(new_sid(), "sent")
    answer = await post(http, bridge, "/twilio/status", params, headers=bridge.signed("/twilio/inbound", params))
    assert answer.status == 403


async def test_same_inbound_ten_times_is_stored_once(http: aiohttp.ClientSession, bridge: Bridge, db: Any) -> None:
    sid = new_sid()
    params = inbound_params(sid, unique_number(), "only once")
    headers = {**bridge.signed("/twilio/inbound", params), "I-Twilio-Idempotency-Token": uuid.uuid4().hex}
    answers = await asyncio.gather(*(post(http, bridge, "/twilio/inbound", params, headers) for _ in range(10)))
    assert [a.status for a in answers] == [200] * 10
    assert await db.messages.count_documents({"twilio_sid": sid}) == 1
    msg = await db.messages.find_one({"twilio_sid": sid})
    conv = await db.conversations.find_one({"_id": msg["conversation_id"]})
    assert (conv["message_count"], conv["unread_count"]) == (1, 1)


async def test_mms_media_is_kept(http: aiohttp.ClientSession, bridge: Bridge, db: Any) -> None:
    sid = new_sid("MM")
    params = inbound_params(
        sid,
        unique_number(),
        "",
        NumMedia="2",
        MediaUrl0="https://api.twilio.com/media/ME0",
        MediaContentType0="image/jpeg",
        MediaUrl1="https://api.twilio.com/media/ME1",
        MediaContentType1="video/mp4",
    )
    answer = await post(http, bridge, "/twilio/inbound", params)
    assert answer.status == 200, answer.text
    msg = await db.messages.find_one({"twilio_sid": sid})
    assert msg["media"] == [
        {"url": "https://api.twilio.com/media/ME0", "content_type": "image/jpeg"},
        {"url": "https://api.twilio.com/media/ME1", "content_type": "video/mp4"},
    ]


async def test_stop_and_start_change_opt_out(http: aiohttp.ClientSession, bridge: Bridge, db: Any) -> None:
    contact = unique_number()
    first = new_sid()
    assert (await post(http, bridge, "/twilio/inbound", inbound_params(first, contact, "hi"))).status == 200
    cid = (await db.messages.find_one({"twilio_sid": first}))["conversation_id"]
    assert (await db.conversations.find_one({"_id": cid}))["opted_out"] is False
    assert (await post(http, bridge, "/twilio/inbound", inbound_params(new_sid(), contact, "STOP"))).status == 200
    assert (await db.conversations.find_one({"_id": cid}))["opted_out"] is True
    assert (await post(http, bridge, "/twilio/inbound", inbound_params(new_sid(), contact, "START"))).status == 200
    assert (await db.conversations.find_one({"_id": cid}))["opted_out"] is False


# Each message's callbacks: one terminal outcome per message, so the final status is well defined.
_PATHS = [
    (["sending", "sent", "delivered"], "delivered"),
    (["sending", "sent", "undelivered"], "undelivered"),
    (["sent", "failed"], "failed"),
    (["sending", "sent", "delivered", "read"], "read"),
]


async def test_status_callbacks_shuffled_with_duplicates(
    http: aiohttp.ClientSession, bridge: Bridge, grpc_server: str, db: Any
) -> None:
    contact = unique_number()
    agent = f"agent-{uuid.uuid4().hex[:8]}"
    async with grpc.aio.insecure_channel(grpc_server) as channel:
        sms = sms_pb2_grpc.SmsServiceStub(channel)
        sent = await asyncio.gather(
            *(
                sms.Send(
                    sms_pb2.SendRequest(to=contact, body=f"outbound {i}", request_id=f"bridge-status-{i}"),
                    metadata=auth(agent),
                    timeout=30,
                )
                for i in range(100)
            )
        )
    messages = [r.message for r in sent]
    # The worker writes Twilio's sid on the message once the create call answered; do the same here.
    expected: dict[str, tuple[set[str], str]] = {}
    for i, m in enumerate(messages):
        sid = new_sid()
        await db.messages.update_one({"_id": ObjectId(m.id)}, {"$set": {"twilio_sid": sid}})
        path, final = _PATHS[i % len(_PATHS)]
        expected[sid] = (set(path), final)
    # 10 callbacks per message: every distinct status at least once, the rest repeats.
    rng = random.Random(1234)
    callbacks: list[dict[str, str]] = []
    for sid, (statuses, _) in expected.items():
        chosen = sorted(statuses) + [rng.choice(sorted(statuses)) for _ in range(10 - len(statuses))]
        for status in chosen:
            extra = {"ErrorCode": "30003"} if status == "undelivered" else {}
            callbacks.append(status_params(sid, status, **extra))
    rng.shuffle(callbacks)
    assert len(callbacks) == 1000

    gate = asyncio.Semaphore(50)

    async def send(params: dict[str, str]) -> int:
        async with gate:
            return (await post(http, bridge, "/twilio/status", params)).status

    answers = await asyncio.gather(*(send(c) for c in callbacks))
    assert answers == [200] * 1000

    for sid, (distinct, final) in expected.items():
        msg = await db.messages.find_one({"twilio_sid": sid})
        assert msg["status"] == final, (sid, msg["status"], final)
        history = [h["status"] for h in msg["status_history"]]
        assert sorted(history) == sorted({"queued", *distinct}), (sid, history)
        if final == "undelivered":
            assert msg["error_code"] == 30003


async def test_status_for_unknown_sid_is_503_until_stored(
    http: aiohttp.ClientSession, bridge: Bridge, grpc_server: str, db: Any
) -> None:
    sid = new_sid()
    params = status_params(sid, "delivered", RawDlrDoneDate="2408240501")
    started = time.monotonic()
    answer = await post(http, bridge, "/twilio/status", params)
    assert answer.status == 503
    assert answer.headers["Retry-After"].isdigit()
    assert time.monotonic() - started >= 0.7  # it asked again before giving up
    # The worker stores the sid; Twilio's retry of the same callback is then recorded.
    async with grpc.aio.insecure_channel(grpc_server) as channel:
        sent = await sms_pb2_grpc.SmsServiceStub(channel).Send(
            sms_pb2.SendRequest(to=unique_number(), body="late sid"), metadata=auth("agent-late"), timeout=30
        )
    await db.messages.update_one({"_id": ObjectId(sent.message.id)}, {"$set": {"twilio_sid": sid}})
    answer = await post(http, bridge, "/twilio/status", params)
    assert answer.status == 200
    msg = await db.messages.find_one({"twilio_sid": sid})
    assert msg["status"] == "delivered"
    delivered = [h for h in msg["status_history"] if h["status"] == "delivered"]
    assert len(delivered) == 1
    assert delivered[0]["time"].replace(tzinfo=UTC) == datetime(2024, 8, 24, 5, 1, tzinfo=UTC)


async def test_bad_requests(http: aiohttp.ClientSession, bridge: Bridge, db: Any) -> None:
    no_sid = inbound_params("", unique_number())
    del no_sid["MessageSid"]
    assert (await post(http, bridge, "/twilio/inbound", no_sid)).status == 400
    no_status = status_params(new_sid(), "sent")
    del no_status["MessageStatus"]
    assert (await post(http, bridge, "/twilio/status", no_status)).status == 400
    # A status Twilio does not define: the server says INVALID_ARGUMENT, the bridge 400.
    assert (await post(http, bridge, "/twilio/status", status_params(new_sid(), "exploded"))).status == 400
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    for body in (b"\xff\xfe\xfd", b"MessageSid&&"):
        async with http.post(bridge.url + "/twilio/inbound", data=body, headers=form) as resp:
            assert resp.status == 400
    sid = new_sid()
    async with http.post(bridge.url + "/twilio/inbound", json=inbound_params(sid, unique_number())) as resp:
        assert resp.status == 400
    assert await db.messages.count_documents({"twilio_sid": sid}) == 0


async def test_oversized_bodies_get_413(http: aiohttp.ClientSession, bridge: Bridge, db: Any) -> None:
    sid = new_sid()
    params = inbound_params(sid, unique_number(), "x" * (64 * 1024))
    before = await metric(http, bridge, 'sms_bridge_posts_total{route="inbound",outcome="too_large"}')
    assert (await post(http, bridge, "/twilio/inbound", params)).status == 413

    async def chunks() -> AsyncIterator[bytes]:
        yield f"MessageSid={sid}&From=%2B14155550100&To=%2B15005550006&Body=".encode()
        for _ in range(20):
            yield b"y" * 4096

    async with http.post(
        bridge.url + "/twilio/inbound", data=chunks(), headers={"Content-Type": "application/x-www-form-urlencoded"}
    ) as resp:
        assert resp.status == 413
    assert await db.messages.count_documents({"twilio_sid": sid}) == 0
    assert await metric(http, bridge, 'sms_bridge_posts_total{route="inbound",outcome="too_large"}') == before + 2
    # Just under the limit is fine.
    ok = inbound_params(new_sid(), unique_number(), "")
    ok["Padding"] = "z" * (60 * 1024)
    assert (await post(http, bridge, "/twilio/inbound", ok)).status == 200


async def test_metrics_move(http: aiohttp.ClientSession, bridge: Bridge) -> None:
    stored = 'sms_bridge_posts_total{route="inbound",outcome="stored"}'
    dup = 'sms_bridge_posts_total{route="inbound",outcome="duplicate"}'
    calls = 'sms_bridge_ingest_call_seconds_count{method="RecordInbound",result="OK"}'
    before = [await metric(http, bridge, s) for s in (stored, dup, calls)]
    params = inbound_params(new_sid(), unique_number())
    assert (await post(http, bridge, "/twilio/inbound", params)).status == 200
    assert (await post(http, bridge, "/twilio/inbound", params)).status == 200
    after = [await metric(http, bridge, s) for s in (stored, dup, calls)]
    assert after == [before[0] + 1, before[1] + 1, before[2] + 2]


async def test_server_outage(
    base_env: dict[str, str], server_proc_factory: list[ChildProcess], http: aiohttp.ClientSession, db: Any
) -> None:
    port = free_port()
    server, target = start_server(base_env, port)
    server_proc_factory.append(server)
    b = start_bridge(base_env, target, SMS_BRIDGE_DEADLINE_SECONDS="1.5")
    server_proc_factory.append(b.proc)
    assert await healthz(http, b) == 200

    assert server.stop() == 0

    await eventually_async(
        lambda: healthz(http, b), 15, "/healthz 503 while the server is down", until=lambda status: status == 503
    )
    sid = new_sid()
    params = inbound_params(sid, unique_number(), "during the outage")
    started = time.monotonic()
    answer = await post(http, b, "/twilio/inbound", params)
    assert answer.status == 503
    assert "Retry-After" in answer.headers
    assert time.monotonic() - started < 3.0  # bounded by the deadline, well within Twilio's 15 s
    assert await db.messages.count_documents({"twilio_sid": sid}) == 0

    # Back on the same address; the replay right after start-up must not meet a stale channel.
    server2, _ = start_server(base_env, port)
    server_proc_factory.append(server2)
    answer = await post(http, b, "/twilio/inbound", params)
    assert answer.status == 200, answer.text
    assert await healthz(http, b) == 200
    assert (await post(http, b, "/twilio/inbound", params)).status == 200
    assert await db.messages.count_documents({"twilio_sid": sid}) == 1
    assert await metric(http, b, 'sms_bridge_posts_total{route="inbound",outcome="unavailable"}') == 1
    assert b.proc.stop() == 0


async def test_sigterm_finishes_in_flight_posts(
    base_env: dict[str, str], grpc_server: str, server_proc_factory: list[ChildProcess], http: aiohttp.ClientSession
) -> None:
    b = start_bridge(base_env, grpc_server)
    server_proc_factory.append(b.proc)
    # A callback for a sid nobody stored is re-asked for ~0.75 s: long enough to be in flight at SIGTERM.
    in_flight = asyncio.create_task(post(http, b, "/twilio/status", status_params(new_sid(), "sent")))
    retries = 'sms_bridge_ingest_retries_total{method="RecordStatus",cause="not_found"}'

    await eventually_async(lambda: metric(http, b, retries), 15, "the post in flight", until=lambda n: n > 0)
    b.proc.process.send_signal(signal.SIGTERM)
    answer = await in_flight
    assert answer.status == 503  # answered, not cut off
    code = await asyncio.to_thread(b.proc.process.wait, 15)
    assert code == 0
    assert "webhook bridge stopped" in b.proc.log()


async def test_verify_off_warns_and_accepts_unsigned(
    base_env: dict[str, str],
    grpc_server: str,
    server_proc_factory: list[ChildProcess],
    http: aiohttp.ClientSession,
    db: Any,
) -> None:
    b = start_bridge(base_env, grpc_server, SMS_WEBHOOK_VERIFY="false")
    server_proc_factory.append(b.proc)
    assert "SMS_WEBHOOK_VERIFY=false" in b.proc.log()
    sid = new_sid()
    assert (await post(http, b, "/twilio/inbound", inbound_params(sid, unique_number()), headers={})).status == 200
    assert await db.messages.count_documents({"twilio_sid": sid}) == 1
    assert b.proc.stop() == 0


def test_refuses_to_start_without_auth_token(base_env: dict[str, str]) -> None:
    env = {**base_env, "SMS_BRIDGE_ADDR": f"127.0.0.1:{free_port()}"}
    done = subprocess.run([*SMS_GATEWAY, "bridge"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "TWILIO_AUTH_TOKEN" in done.stderr
