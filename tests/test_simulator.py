"""The Twilio simulator, driven by the real twilio package and checked by a real webhook receiver."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import MultiDictProxy
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from devstack.twilio_sim import RulesError, TwilioSimulator, load_rules
from server.config import Config, without_settings
from server.embedded import free_port
from tests.support.launch import start_listening
from tests.support.polling import eventually_async
from tests.support.processes import SMS_GATEWAY

SID = "AC" + "5a" * 16
TOKEN = "sim-test-token-0123456789"
OUR_NUMBER = "+15005550006"
SERVICE_SID = "MG" + "1b" * 16
MESSAGE_KEYS = {
    "account_sid",
    "api_version",
    "body",
    "date_created",
    "date_sent",
    "date_updated",
    "direction",
    "error_code",
    "error_message",
    "from",
    "messaging_service_sid",
    "num_media",
    "num_segments",
    "price",
    "price_unit",
    "sid",
    "status",
    "subresource_uris",
    "to",
    "uri",
}
PAGE_KEYS = {
    "messages",
    "page",
    "page_size",
    "start",
    "end",
    "uri",
    "first_page_uri",
    "next_page_uri",
    "previous_page_uri",
}


@dataclass
class Hit:
    """One post the receiver got."""

    path: str
    url: str
    headers: dict[str, str]
    form: MultiDictProxy[str]
    signature_ok: bool


@dataclass
class Receiver:
    """A webhook receiver standing in for the bridge: records posts, answers planned statuses."""

    base: str = ""
    hits: list[Hit] = field(default_factory=list)
    plan: dict[str, list[int]] = field(default_factory=dict)

    def on(self, path: str) -> list[Hit]:
        """The posts to `path`, in arrival order."""
        return [h for h in self.hits if h.path == path]


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    validator = RequestValidator(TOKEN)

    async def handle(request: web.Request) -> web.Response:
        form = await request.post()
        # The URL as configured on the sending side, which is what the signature covers.
        url = rec.base + request.path_qs
        signed = validator.validate(url, form, request.headers.get("X-Twilio-Signature", ""))
        rec.hits.append(Hit(request.path, url, dict(request.headers), form, bool(signed)))  # type: ignore[arg-type]
        planned = rec.plan.get(request.path)
        status = planned.pop(0) if planned else 200
        if request.path == "/twilio/inbound":
            twiml = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
            return web.Response(status=status, text=twiml, content_type="text/xml")
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield rec
    await runner.cleanup()


@pytest.fixture(scope="module")
async def sim(receiver: Receiver) -> AsyncIterator[TwilioSimulator]:
    cfg = Config(
        twilio_account_sid=SID,
        twilio_auth_token=TOKEN,
        twilio_from_number=OUR_NUMBER,
        public_base_url=receiver.base,
        simulator_rules='{"lifecycle_ms": {"queued": 10, "sending": 10, "sent": 10}}',
    )
    simulator = TwilioSimulator(cfg)
    await simulator.start("127.0.0.1", 0)
    yield simulator
    await simulator.stop()


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(scope="module")
async def client(sim: TwilioSimulator) -> AsyncIterator[Client]:
    twilio = Client(SID, TOKEN, http_client=AsyncTwilioHttpClient())
    twilio.api.base_url = sim.base_url
    yield twilio
    await twilio.http_client.close()


@pytest.fixture(autouse=True)
async def clean(sim: TwilioSimulator, receiver: Receiver, http: aiohttp.ClientSession) -> None:
    async with http.post(sim.base_url + "/_sim/reset") as resp:
        assert resp.status == 200
    receiver.hits.clear()
    receiver.plan.clear()


async def put_rules(http: aiohttp.ClientSession, sim: TwilioSimulator, rules: dict[str, Any]) -> dict[str, Any]:
    async with http.put(sim.base_url + "/_sim/rules", json=rules) as resp:
        data: dict[str, Any] = await resp.json()
        assert resp.status == 200, data
        return data


async def sim_get(http: aiohttp.ClientSession, sim: TwilioSimulator, path: str, **query: str) -> Any:
    async with http.get(sim.base_url + path, params=query) as resp:
        assert resp.status == 200
        return await resp.json()


AUTH = {"Authorization": "Basic " + base64.b64encode(f"{SID}:{TOKEN}".encode()).decode()}


def messages_url(sim: TwilioSimulator) -> str:
    return f"{sim.base_url}/2010-04-01/Accounts/{SID}/Messages.json"


def statuses(hits: list[Hit]) -> list[str]:
    return [h.form["MessageStatus"] for h in hits]


async def raises_twilio(call: Awaitable[Any]) -> TwilioRestException:
    with pytest.raises(TwilioRestException) as info:
        await call
    return info.value


# ----- REST API -----


async def test_wrong_credentials_answer_401_20003(sim: TwilioSimulator) -> None:
    bad = Client(SID, "not-the-token", http_client=AsyncTwilioHttpClient())
    bad.api.base_url = sim.base_url
    try:
        exc = await raises_twilio(bad.messages.create_async(to="+15551230001", from_=OUR_NUMBER, body="hi"))
    finally:
        await bad.http_client.close()
    assert (exc.status, exc.code) == (401, 20003)
    assert sim.stats()["auth_failures"] == 1


async def test_other_account_in_path_is_not_found(client: Client) -> None:
    other = client.api.v2010.accounts("AC" + "0f" * 16)
    exc = await raises_twilio(other.messages.create_async(to="+15551230001", from_=OUR_NUMBER, body="hi"))
    assert (exc.status, exc.code) == (404, 20404)


async def test_create_answers_201_with_twilios_shape(sim: TwilioSimulator, http: aiohttp.ClientSession) -> None:
    form = {"To": "+15551230002", "From": OUR_NUMBER, "Body": "hello"}
    async with http.post(messages_url(sim), data=form, headers=AUTH) as resp:
        assert resp.status == 201
        data = await resp.json()
    assert set(data) == MESSAGE_KEYS
    assert re.fullmatch(r"SM[0-9a-f]{32}", data["sid"])
    assert data["status"] == "queued"
    assert data["direction"] == "outbound-api"
    assert (data["num_segments"], data["num_media"]) == ("1", "0")
    assert data["price"] is None and data["price_unit"] == "USD"
    assert data["date_sent"] is None
    created = parsedate_to_datetime(data["date_created"])
    assert abs(created - datetime.now(UTC)) < timedelta(seconds=5)
    assert data["date_created"].endswith(" +0000")
    assert data["uri"] == f"/2010-04-01/Accounts/{SID}/Messages/{data['sid']}.json"
    recorded = await sim_get(http, sim, "/_sim/messages", sid=data["sid"])
    assert recorded["messages"][0]["params"] == form


async def test_media_and_messaging_service_create(client: Client) -> None:
    mms = await client.messages.create_async(
        to="+15551230003", from_=OUR_NUMBER, media_url=["https://example.com/a.jpg", "https://example.com/b.png"]
    )
    assert re.fullmatch(r"MM[0-9a-f]{32}", mms.sid or "")
    assert mms.num_media == "2"
    long_unicode = "é" * 5 + "😀" * 40  # UCS-2 because of the emoji: 85 code units, two segments
    via_service = await client.messages.create_async(
        to="+15551230004", messaging_service_sid=SERVICE_SID, body=long_unicode
    )
    assert via_service.status == "accepted"
    assert via_service.from_ is None
    assert via_service.messaging_service_sid == SERVICE_SID
    assert via_service.num_segments == "2"


async def test_fetch_after_delivery_has_price_and_date_sent(
    client: Client, sim: TwilioSimulator, http: aiohttp.ClientSession
) -> None:
    created = await client.messages.create_async(to="+15551230005", from_=OUR_NUMBER, body="x")
    assert created.sid is not None
    sid = created.sid

    async def delivered() -> bool:
        found = (await sim_get(http, sim, "/_sim/messages", sid=sid))["messages"]
        return bool(found[0]["status"] == "delivered")

    await eventually_async(delivered, 5, "delivered")
    fetched = await client.messages(created.sid).fetch_async()
    assert fetched.sid == created.sid
    assert fetched.status == "delivered"
    assert fetched.price == "-0.00790"
    assert fetched.date_sent is not None


async def test_cancel_redact_and_delete(client: Client, sim: TwilioSimulator, http: aiohttp.ClientSession) -> None:
    await put_rules(http, sim, {"lifecycle_ms": {"queued": 60_000}})
    queued = await client.messages.create_async(to="+15551230006", from_=OUR_NUMBER, body="secret")
    assert queued.sid is not None
    canceled = await client.messages(queued.sid).update_async(status="canceled")
    assert canceled.status == "canceled"
    exc = await raises_twilio(client.messages(queued.sid).update_async(status="canceled"))
    assert (exc.status, exc.code) == (400, 30409)
    redacted = await client.messages(queued.sid).update_async(body="")
    assert redacted.body == ""
    assert await client.messages(queued.sid).delete_async() is True
    exc = await raises_twilio(client.messages(queued.sid).fetch_async())
    assert (exc.status, exc.code) == (404, 20404)


@pytest.mark.parametrize(
    ("form", "code"),
    [
        ({"From": OUR_NUMBER, "Body": "x"}, 21604),
        ({"To": "+15551230007", "Body": "x"}, 21603),
        ({"To": "+15551230007", "From": OUR_NUMBER}, 21602),
        ({"To": "555-1234", "From": OUR_NUMBER, "Body": "x"}, 21211),
        ({"To": "+15551230007", "From": OUR_NUMBER, "Body": "x" * 1601}, 21617),
    ],
)
async def test_validation_errors_use_the_legacy_shape(
    sim: TwilioSimulator, http: aiohttp.ClientSession, form: dict[str, str], code: int
) -> None:
    async with http.post(messages_url(sim), data=form, headers=AUTH) as resp:
        data = await resp.json()
        assert resp.status == 400
    assert data == {
        "code": code,
        "message": data["message"],
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": 400,
    }
    assert data["message"]


async def test_more_than_ten_media_is_refused(client: Client) -> None:
    urls = [f"https://example.com/{i}.jpg" for i in range(11)]
    exc = await raises_twilio(client.messages.create_async(to="+15551230008", from_=OUR_NUMBER, media_url=urls))
    assert (exc.status, exc.code) == (400, 21623)


@pytest.mark.parametrize("code", [21211, 21610, 21614, 21408])
async def test_create_error_rules(client: Client, sim: TwilioSimulator, http: aiohttp.ClientSession, code: int) -> None:
    bad_number = "+15005550001"
    await put_rules(http, sim, {"create_errors": {bad_number: code}})
    exc = await raises_twilio(client.messages.create_async(to=bad_number, from_=OUR_NUMBER, body="x"))
    assert (exc.status, exc.code) == (400, code)
    fine = await client.messages.create_async(to="+15551230009", from_=OUR_NUMBER, body="x")
    assert fine.status == "queued"
    creates = (await sim_get(http, sim, "/_sim/creates"))["creates"]
    assert [(c["params"]["To"], c["code"]) for c in creates] == [(bad_number, code), ("+15551230009", None)]
    stats = sim.stats()
    assert stats["create_errors"] == 1 and stats["errors_by_code"] == {str(code): 1}


async def test_bursts_fail_the_next_creates_then_succeed(
    client: Client, sim: TwilioSimulator, http: aiohttp.ClientSession
) -> None:
    await put_rules(http, sim, {"burst_429": 2, "burst_500": 1})
    seen = []
    for _ in range(3):
        exc = await raises_twilio(client.messages.create_async(to="+15551230010", from_=OUR_NUMBER, body="x"))
        seen.append((exc.status, exc.code))
    assert seen == [(429, 20429), (429, 20429), (500, 20500)]
    ok = await client.messages.create_async(to="+15551230010", from_=OUR_NUMBER, body="x")
    assert ok.status == "queued"
    rules = await sim_get(http, sim, "/_sim/rules")
    assert (rules["burst_429"], rules["burst_500"]) == (0, 0)
    stats = sim.stats()
    assert (stats["creates_429"], stats["creates_500"], stats["creates_accepted"]) == (2, 1, 1)


async def test_rate_rules_with_a_seed_are_repeatable(
    client: Client, sim: TwilioSimulator, http: aiohttp.ClientSession
) -> None:
    async def run() -> list[int]:
        await put_rules(http, sim, {"seed": 11, "rate_429": 0.5, "lifecycle_ms": {"queued": 60_000}})
        codes = []
        for _ in range(12):
            try:
                await client.messages.create_async(to="+15551230011", from_=OUR_NUMBER, body="x")
                codes.append(201)
            except TwilioRestException as exc:
                codes.append(exc.code)
        return codes

    first = await run()
    assert set(first) == {201, 20429}
    assert await run() == first


async def test_latency_applies_to_every_rest_call(
    client: Client, sim: TwilioSimulator, http: aiohttp.ClientSession
) -> None:
    await put_rules(http, sim, {"latency_ms": 150})
    started = time.monotonic()
    await client.messages.list_async(limit=1)
    assert time.monotonic() - started >= 0.15


async def test_list_pages_through_everything_once_newest_first(
    client: Client, sim: TwilioSimulator, http: aiohttp.ClientSession
) -> None:
    await put_rules(http, sim, {"lifecycle_ms": {"queued": 60_000}})
    alice, bob = "+15551230020", "+15551230021"
    created = []
    for i in range(23):
        m = await client.messages.create_async(to=alice if i % 3 else bob, from_=OUR_NUMBER, body=f"m{i}")
        created.append(m.sid)
    listed = [m.sid for m in await client.messages.list_async(page_size=5)]
    assert listed == list(reversed(created))
    streamed = [m.sid async for m in await client.messages.stream_async(page_size=4, limit=10)]
    assert streamed == list(reversed(created))[:10]
    to_bob = await client.messages.list_async(to=bob, page_size=3)
    assert {m.to for m in to_bob} == {bob} and len(to_bob) == 8
    assert len(await client.messages.list_async(from_=OUR_NUMBER, page_size=1000)) == 23
    assert await client.messages.list_async(from_="+15559999999") == []
    today = datetime.now(UTC)
    assert len(await client.messages.list_async(date_sent_after=today - timedelta(days=1))) == 23
    assert await client.messages.list_async(date_sent_before=today - timedelta(days=1)) == []
    async with http.get(
        messages_url(sim), params={"PageSize": "10", "DateSent": today.strftime("%Y-%m-%d")}, headers=AUTH
    ) as resp:
        first = await resp.json()
    assert set(first) == PAGE_KEYS
    assert (first["page"], first["page_size"], first["start"], first["end"]) == (0, 10, 0, 9)
    assert first["previous_page_uri"] is None and "PageToken=PA" in first["next_page_uri"]
    async with http.get(sim.base_url + first["next_page_uri"], headers=AUTH) as resp:
        second = await resp.json()
    assert second["page"] == 1 and second["start"] == 10
    async with http.get(sim.base_url + second["previous_page_uri"], headers=AUTH) as resp:
        back = await resp.json()
    assert [m["sid"] for m in back["messages"]] == [m["sid"] for m in first["messages"]]
    async with http.get(messages_url(sim), params={"PageSize": "10", "Page": "2"}, headers=AUTH) as resp:
        last = await resp.json()
    assert len(last["messages"]) == 3 and last["next_page_uri"] is None


async def test_paging_is_stable_while_messages_arrive(
    client: Client, sim: TwilioSimulator, http: aiohttp.ClientSession
) -> None:
    await put_rules(http, sim, {"lifecycle_ms": {"queued": 60_000}})
    for i in range(6):
        await client.messages.create_async(to="+15551230022", from_=OUR_NUMBER, body=f"m{i}")
    seen = []
    page = await client.messages.page_async(page_size=2)
    while page is not None:
        seen += [m.sid for m in page]
        await client.messages.create_async(to="+15551230022", from_=OUR_NUMBER, body="late")
        page = await page.next_page_async()
    assert len(seen) == 6 and len(set(seen)) == 6


# ----- lifecycle and status callbacks -----


async def test_status_callbacks_arrive_in_order_signed_with_tokens(
    client: Client, receiver: Receiver, http: aiohttp.ClientSession, sim: TwilioSimulator
) -> None:
    callback = receiver.base + "/twilio/status?tenant=a"
    m = await client.messages.create_async(to="+15551230030", from_=OUR_NUMBER, body="hi", status_callback=callback)
    await eventually_async(lambda: len(receiver.on("/twilio/status")) >= 3, 5, "three callbacks")
    hits = receiver.on("/twilio/status")
    assert statuses(hits) == ["sending", "sent", "delivered"]
    assert all(h.signature_ok for h in hits)
    assert all(h.url == callback for h in hits)
    tokens = [h.headers.get("I-Twilio-Idempotency-Token") for h in hits]
    assert all(tokens) and len(set(tokens)) == 3
    for h in hits:
        assert h.form["MessageSid"] == h.form["SmsSid"] == m.sid
        assert (h.form["AccountSid"], h.form["From"], h.form["To"]) == (SID, OUR_NUMBER, "+15551230030")
        assert h.form["ApiVersion"] == "2010-04-01" and h.form["SmsStatus"] == h.form["MessageStatus"]
        assert "ErrorCode" not in h.form
    assert re.fullmatch(r"\d{10}", hits[-1].form["RawDlrDoneDate"])
    log = (await sim_get(http, sim, "/_sim/callbacks", sid=m.sid))["callbacks"]
    assert [(c["status"], c["attempt"]) for c in log] == [(200, 1)] * 3


async def test_messaging_service_goes_through_queued_with_a_sender(client: Client, receiver: Receiver) -> None:
    await client.messages.create_async(
        to="+15551230031", messaging_service_sid=SERVICE_SID, body="hi", status_callback=receiver.base + "/s"
    )
    await eventually_async(lambda: len(receiver.on("/s")) >= 4, 5, "four callbacks")
    hits = receiver.on("/s")
    assert statuses(hits) == ["queued", "sending", "sent", "delivered"]
    assert {h.form["MessagingServiceSid"] for h in hits} == {SERVICE_SID}
    assert {h.form["From"] for h in hits} == {OUR_NUMBER}


@pytest.mark.parametrize(
    ("outcome", "expected", "code"),
    [
        ("undelivered", ["sending", "sent", "undelivered"], "30003"),
        ({"status": "failed", "error_code": 30008}, ["sending", "failed"], "30008"),
    ],
)
async def test_final_outcome_rules(
    client: Client,
    receiver: Receiver,
    sim: TwilioSimulator,
    http: aiohttp.ClientSession,
    outcome: Any,
    expected: list[str],
    code: str,
) -> None:
    to = "+15005550010"
    await put_rules(http, sim, {"outcomes": {to: outcome}, "lifecycle_ms": {"queued": 5, "sending": 5, "sent": 5}})
    m = await client.messages.create_async(to=to, from_=OUR_NUMBER, body="x", status_callback=receiver.base + "/o")
    await eventually_async(lambda: len(receiver.on("/o")) >= len(expected), 5, "final callback")
    hits = receiver.on("/o")
    assert statuses(hits) == expected
    assert hits[-1].form["ErrorCode"] == code
    assert all("ErrorCode" not in h.form for h in hits[:-1])
    fetched = await client.messages(m.sid).fetch_async()
    assert (fetched.status, fetched.error_code) == (expected[-1], int(code))


async def test_duplicated_callbacks_share_the_idempotency_token(
    client: Client, receiver: Receiver, sim: TwilioSimulator, http: aiohttp.ClientSession
) -> None:
    await put_rules(http, sim, {"callbacks": {"copies": 3}})
    await client.messages.create_async(
        to="+15551230032", from_=OUR_NUMBER, body="x", status_callback=receiver.base + "/d"
    )
    await eventually_async(lambda: len(receiver.on("/d")) >= 9, 5, "nine callbacks")
    hits = receiver.on("/d")
    assert statuses(hits) == ["sending"] * 3 + ["sent"] * 3 + ["delivered"] * 3
    tokens = [h.headers["I-Twilio-Idempotency-Token"] for h in hits]
    assert len(set(tokens[0:3])) == len(set(tokens[3:6])) == len(set(tokens[6:9])) == 1
    assert len(set(tokens)) == 3
    assert all(h.signature_ok for h in hits)


async def test_reordered_callbacks(
    client: Client, receiver: Receiver, sim: TwilioSimulator, http: aiohttp.ClientSession
) -> None:
    await put_rules(http, sim, {"callbacks": {"order": "reverse"}})
    await client.messages.create_async(
        to="+15551230033", from_=OUR_NUMBER, body="x", status_callback=receiver.base + "/r"
    )
    await eventually_async(lambda: len(receiver.on("/r")) >= 3, 5, "reversed callbacks")
    assert statuses(receiver.on("/r")) == ["delivered", "sent", "sending"]
    await put_rules(http, sim, {"seed": 3, "callbacks": {"order": "shuffle"}})
    sids = [
        (
            await client.messages.create_async(
                to="+15551230034", from_=OUR_NUMBER, body="x", status_callback=receiver.base + f"/sh{i}"
            )
        ).sid
        for i in range(4)
    ]
    await eventually_async(lambda: all(len(receiver.on(f"/sh{i}")) >= 3 for i in range(4)), 5, "shuffled callbacks")
    orders = [statuses(receiver.on(f"/sh{i}")) for i in range(4)]
    assert all(sorted(o) == ["delivered", "sending", "sent"] for o in orders)
    logged = (await sim_get(http, sim, "/_sim/callbacks", sid=sids[0]))["callbacks"]
    assert [c["params"]["MessageStatus"] for c in logged] == orders[0]


async def test_fragment_overrides_retry_5xx_with_one_token(
    client: Client, receiver: Receiver, sim: TwilioSimulator, http: aiohttp.ClientSession
) -> None:
    await put_rules(http, sim, {"outcomes": {"+15551230035": "failed"}, "callbacks": {"retry_backoff_ms": 5}})
    receiver.plan["/retry"] = [500, 503]
    m = await client.messages.create_async(
        to="+15551230035", from_=OUR_NUMBER, body="x", status_callback=receiver.base + "/retry?k=1#rc=3&rp=5xx"
    )
    await eventually_async(lambda: len(receiver.on("/retry")) >= 4, 5, "retried and next callback")
    hits = receiver.on("/retry")
    assert statuses(hits) == ["sending", "sending", "sending", "failed"]
    assert len({h.headers["I-Twilio-Idempotency-Token"] for h in hits[:3]}) == 1
    assert all(h.signature_ok and h.url == receiver.base + "/retry?k=1" for h in hits)
    log = (await sim_get(http, sim, "/_sim/callbacks", sid=m.sid))["callbacks"]
    assert [(c["attempt"], c["status"]) for c in log] == [(1, 500), (2, 503), (3, 200), (1, 200)]


async def test_default_policy_does_not_retry_5xx_but_retries_connect_once(
    client: Client, receiver: Receiver, sim: TwilioSimulator, http: aiohttp.ClientSession
) -> None:
    await put_rules(http, sim, {"outcomes": {"+15551230036": "failed"}, "callbacks": {"retry_backoff_ms": 5}})
    receiver.plan["/plain"] = [500]
    await client.messages.create_async(
        to="+15551230036", from_=OUR_NUMBER, body="x", status_callback=receiver.base + "/plain"
    )
    await eventually_async(lambda: len(receiver.on("/plain")) >= 2, 5, "both statuses")
    assert [(h.form["MessageStatus"]) for h in receiver.on("/plain")] == ["sending", "failed"]
    closed = f"http://127.0.0.1:{free_port()}/nobody"
    m = await client.messages.create_async(to="+15551230036", from_=OUR_NUMBER, body="x", status_callback=closed)

    async def attempts() -> list[dict[str, Any]]:
        return list((await sim_get(http, sim, "/_sim/callbacks", sid=m.sid))["callbacks"])

    async def four_attempts() -> bool:
        return len(await attempts()) >= 4

    await eventually_async(four_attempts, 5, "two attempts for each of two callbacks")
    log = await attempts()
    assert [(c["params"]["MessageStatus"], c["attempt"]) for c in log] == [
        ("sending", 1),
        ("sending", 2),
        ("failed", 1),
        ("failed", 2),
    ]
    assert all(c["status"] is None and c["error"].startswith("connect") for c in log)
    assert sim.stats()["callbacks_failed"] == 3  # the 500 above and the two unreachable ones


# ----- inbound -----


async def test_inbound_injection_posts_a_signed_twilio_form(
    client: Client, receiver: Receiver, sim: TwilioSimulator, http: aiohttp.ClientSession
) -> None:
    payload = {
        "from": "+15551230040",
        "body": "photo attached",
        "media": [{"url": "https://example.com/p.jpg", "content_type": "image/jpeg"}],
    }
    async with http.post(sim.base_url + "/_sim/inbound", json=payload) as resp:
        result = await resp.json()
    assert (result["status"], result["attempts"]) == (200, 1)
    assert re.fullmatch(r"MM[0-9a-f]{32}", result["sid"])
    (hit,) = receiver.on("/twilio/inbound")
    assert hit.signature_ok
    assert hit.headers["I-Twilio-Idempotency-Token"]
    form = hit.form
    assert form["MessageSid"] == form["SmsSid"] == form["SmsMessageSid"] == result["sid"]
    assert (form["AccountSid"], form["From"], form["To"], form["Body"]) == (
        SID,
        "+15551230040",
        OUR_NUMBER,
        "photo attached",
    )
    assert (form["NumMedia"], form["NumSegments"], form["SmsStatus"], form["ApiVersion"]) == (
        "1",
        "1",
        "received",
        "2010-04-01",
    )
    assert (form["MediaUrl0"], form["MediaContentType0"]) == ("https://example.com/p.jpg", "image/jpeg")
    assert form["FromCountry"] == "US"
    listed = await client.messages.list_async(to=OUR_NUMBER)
    assert [(m.sid, m.direction, m.status) for m in listed] == [(result["sid"], "inbound", "received")]


async def test_inbound_retries_per_fragment_and_reports_the_status(
    receiver: Receiver, sim: TwilioSimulator, http: aiohttp.ClientSession
) -> None:
    receiver.plan["/hook"] = [502, 502, 502]
    payload = {"from": "+15551230041", "body": "hi", "url": receiver.base + "/hook#rc=1&rp=all"}
    async with http.post(sim.base_url + "/_sim/inbound", json=payload) as resp:
        result = await resp.json()
    assert (result["status"], result["attempts"]) == (502, 2)
    hits = receiver.on("/hook")
    assert (
        len(hits) == 2
        and hits[0].headers["I-Twilio-Idempotency-Token"] == hits[1].headers["I-Twilio-Idempotency-Token"]
    )
    assert sim.stats()["inbound_failed"] == 1


async def test_inbound_without_delivery_is_only_listed(
    client: Client, receiver: Receiver, sim: TwilioSimulator, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        sim.base_url + "/_sim/inbound", json={"from": "+15551230042", "body": "lost", "deliver": False}
    ) as resp:
        lost = await resp.json()
    assert (lost["status"], lost["attempts"]) == (None, 0)
    # A delivered one afterwards: whatever the first would have posted would have arrived before it.
    async with http.post(sim.base_url + "/_sim/inbound", json={"from": "+15551230042", "body": "seen"}) as resp:
        seen = await resp.json()
    assert [h.form["MessageSid"] for h in receiver.hits] == [seen["sid"]]
    listed = await client.messages.list_async(from_="+15551230042")
    assert [m.sid for m in listed] == [seen["sid"], lost["sid"]]
    inbound = (await sim_get(http, sim, "/_sim/messages", direction="inbound"))["messages"]
    assert {m["sid"] for m in inbound} == {seen["sid"], lost["sid"]}


# ----- control API, rules, process -----


async def test_rules_control_api(sim: TwilioSimulator, http: aiohttp.ClientSession) -> None:
    async with http.put(sim.base_url + "/_sim/rules", json={"burst_429": -1}) as resp:
        assert resp.status == 400
        assert "burst_429" in (await resp.json())["error"]
    async with http.put(sim.base_url + "/_sim/rules", json={"nonsense": 1}) as resp:
        assert resp.status == 400
    await put_rules(http, sim, {"latency_ms": 5, "create_errors": {"+15005550004": 21610}})
    async with http.patch(sim.base_url + "/_sim/rules", json={"callbacks": {"copies": 2}}) as resp:
        patched = await resp.json()
    assert patched["latency_ms"] == 5 and patched["callbacks"]["copies"] == 2
    assert patched["create_errors"] == {"+15005550004": 21610}
    async with http.post(sim.base_url + "/_sim/reset") as resp:
        assert resp.status == 200
    restored = await sim_get(http, sim, "/_sim/rules")
    assert restored["latency_ms"] == 0 and restored["lifecycle_ms"]["queued"] == 10
    assert (await sim_get(http, sim, "/healthz")) == {"status": "ok"}


def test_rules_parsing(tmp_path: Any) -> None:
    path = tmp_path / "rules.json"
    path.write_text('{"outcomes": {"+15005550010": "undelivered"}, "callbacks": {"order": "shuffle"}}')
    rules = load_rules(str(path))
    assert rules.outcome_for("+15005550010").error_code == 30003
    assert rules.outcome_for("+15551230000").status == "delivered"
    assert rules.callbacks.order == "shuffle"
    for bad in ('{"rate_429": 2}', '{"outcomes": {"+1": "lost"}}', '{"lifecycle_ms": {"late": 1}}', "[1]"):
        with pytest.raises(RulesError):
            load_rules(bad)


async def test_process_serves_and_exits_0_on_sigterm() -> None:
    port = free_port()
    env = without_settings(os.environ)
    env.update(
        SMS_SIMULATOR_ADDR=f"127.0.0.1:{port}",
        TWILIO_ACCOUNT_SID=SID,
        TWILIO_AUTH_TOKEN=TOKEN,
        SMS_SIMULATOR_RULES='{"burst_500": 1}',
    )
    proc = await asyncio.to_thread(
        start_listening, "twilio-simulator", [*SMS_GATEWAY, "twilio-simulator"], env, "127.0.0.1", port
    )
    try:
        twilio = Client(SID, TOKEN, http_client=AsyncTwilioHttpClient())
        twilio.api.base_url = f"http://127.0.0.1:{port}"
        try:
            exc = await raises_twilio(twilio.messages.create_async(to="+15551230050", from_=OUR_NUMBER, body="x"))
            assert exc.code == 20500
            ok = await twilio.messages.create_async(to="+15551230050", from_=OUR_NUMBER, body="x")
            assert ok.status == "queued"
        finally:
            await twilio.http_client.close()
    finally:
        code = await asyncio.to_thread(proc.stop)
    assert code == 0, proc.log()[-2000:]
    assert TOKEN not in proc.log()
