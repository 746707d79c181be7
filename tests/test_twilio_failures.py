"""Twilio failing the worker and the sync (issue 10), in-process through the real `twilio` client and simulator.

Failed list and next-page requests (401, 403, 429, 500, 503) are classified; SyncFromTwilio answers UNAVAILABLE or
FAILED_PRECONDITION with a bounded message, is capped in pages and time and says how far it got, and reads only
our own numbers; a settle that cannot read Twilio counts as a try and ends FAILED; a sid Twilio gave us survives a
store outage without a second create, and a sid another message owns is not taken for an outage.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import aiohttp
import grpc
import pytest
from bson import ObjectId
from google.protobuf.timestamp_pb2 import Timestamp
from sms.v1 import sms_pb2, sms_pb2_grpc

from devstack.twilio_sim import RulesError, parse_rules
from server.documents import conversation_id
from server.embedded import EmbeddedServer, free_port
from server.errors import error_reason
from server.reasons import Reason
from server.worker.twilio_client import MAX_ERROR_TEXT, TwilioClient, TwilioFailure
from tests.support.identities import auth, unique_number, unique_user
from tests.support.in_process import FROM_NUMBER, House, house_env, running_house
from tests.support.polling import eventually_async

ADMIN = auth("ops-admin", "admin")
MAX_PAGES = 4
DEADLINE_SECONDS = 1.5
JOB_TIMEOUT_SECONDS = 5  # a run retries a store write for up to 4 s (one second short of arq's timeout)
HUGE = "upstream error page " * 5000  # 100 KB that must never come back whole


@pytest.fixture(scope="module")
async def house(mongo: EmbeddedServer, redis_server: EmbeddedServer) -> AsyncIterator[House]:
    env = house_env(
        mongo.uri,
        redis_server.uri,
        SMS_SYNC_MAX_PAGES=str(MAX_PAGES),
        SMS_SYNC_DEADLINE_SECONDS=str(DEADLINE_SECONDS),
        SMS_JOB_TIMEOUT_SECONDS=str(JOB_TIMEOUT_SECONDS),
        TWILIO_TIMEOUT_SECONDS="2",
    )
    async with running_house(env) as running:
        yield running


@pytest.fixture(autouse=True)
def default_rules(house: House) -> None:
    house.set_rules()


@pytest.fixture
async def twilio(house: House) -> AsyncIterator[TwilioClient]:
    client = TwilioClient(house.cfg)
    await client.start()
    yield client
    await client.close()


# ----- helpers -----


def sms(house: House) -> sms_pb2_grpc.SmsServiceAsyncStub:
    """The house's stub as what it is: an asyncio channel's."""
    return cast("sms_pb2_grpc.SmsServiceAsyncStub", house.sms)


def stamp(t: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(t)
    return ts


async def sync(house: House, start: datetime, end: datetime | None = None) -> sms_pb2.SyncFromTwilioResponse:
    request = sms_pb2.SyncFromTwilioRequest(start_time=stamp(start))
    if end is not None:
        request.end_time.CopyFrom(stamp(end))
    response: sms_pb2.SyncFromTwilioResponse = await sms(house).SyncFromTwilio(request, metadata=ADMIN)
    return response


async def inject_inbound(house: House, from_: str, to: str, body: str) -> str:
    """An inbound message Twilio has but whose webhook never came; its sid."""
    async with aiohttp.ClientSession() as http:
        payload = {"from": from_, "to": to, "body": body, "deliver": False}
        async with http.post(house.sim.base_url + "/_sim/inbound", json=payload) as resp:
            assert resp.status == 200
            return str((await resp.json())["sid"])


async def first_page(twilio: TwilioClient, pages: int = 1) -> None:
    """Reads `pages` pages of Twilio's list (to our number)."""
    read = 0
    async for _ in twilio.pages(to=FROM_NUMBER, page_size=5):
        read += 1
        if read >= pages:
            return


async def send(house: House, to: str, body: str, user: str = "") -> str:
    resp: sms_pb2.SendResponse = await sms(house).Send(
        sms_pb2.SendRequest(to=to, body=body), metadata=auth(user or unique_user())
    )
    return resp.message.id


async def stored(house: House, message_id: str) -> dict[str, Any]:
    doc = await house.res.store.get_message(message_id)
    assert doc is not None
    return dict(doc)


def creates_to(house: House, to: str) -> list[str]:
    """Sids of the messages Twilio accepted to `to`."""
    return [m.sid for m in house.sim.state.in_order() if m.to == to and m.direction.startswith("outbound")]


def reads(house: House) -> int:
    return int(house.sim.state.counters["reads"])


async def refuse_sids_for(house: House, message_id: str) -> None:
    """Makes the store refuse, for real, to give this one message a twilio_sid (a collection validator)."""
    rule = {"$or": [{"_id": {"$ne": ObjectId(message_id)}}, {"twilio_sid": {"$exists": False}}]}
    await house.res.store.messages.database.command("collMod", "messages", validator=rule)


async def accept_sids(house: House) -> None:
    await house.res.store.messages.database.command("collMod", "messages", validator={})


async def work_while(house: House, meanwhile: Callable[[], Awaitable[None]]) -> None:
    """Runs the worker (burst) while `meanwhile` acts on the world; the validator is lifted whatever happens."""
    try:
        await asyncio.gather(house.work(), meanwhile())
    finally:
        await accept_sids(house)


async def created_at_twilio(house: House, to: str, count: int = 1) -> list[str]:
    return await eventually_async(
        lambda: creates_to(house, to),
        10,
        f"{count} create(s) to {to}",
        until=lambda sids: len(sids) >= count,
        interval=0.01,
    )


# ----- classification of failed reads, through the real twilio client -----


@pytest.mark.parametrize(
    ("status", "code", "transient", "credentials"),
    [(401, 20003, False, True), (403, 20403, False, True), (429, 20429, True, False), (500, 20500, True, False)],
)
async def test_a_failed_list_page_is_classified_by_its_status(
    house: House, twilio: TwilioClient, status: int, code: int, transient: bool, credentials: bool
) -> None:
    house.set_rules(read_errors={"status": status, "message": HUGE})
    with pytest.raises(TwilioFailure) as info:
        await first_page(twilio)
    failure = info.value
    assert (failure.http_status, failure.code) == (status, code)
    assert failure.transient is transient and failure.credentials_refused is credentials
    assert failure.message.startswith("upstream error page") and len(failure.message) <= MAX_ERROR_TEXT


async def test_a_failed_next_page_is_classified_too(house: House, twilio: TwilioClient) -> None:
    # The first page works and names a next one; fetching that next page answers 503.
    house.set_rules(endless_list=True, read_errors={"status": 503, "after": 1})
    before = reads(house)
    with pytest.raises(TwilioFailure) as info:
        await first_page(twilio, pages=2)
    assert info.value.transient and info.value.http_status == 503 and not info.value.credentials_refused
    assert reads(house) - before == 2


async def test_a_network_error_is_transient(house: House) -> None:
    closed = TwilioClient(dataclasses.replace(house.cfg, twilio_api_base_url=f"http://127.0.0.1:{free_port()}"))
    await closed.start()
    try:
        with pytest.raises(TwilioFailure) as info:
            await first_page(closed)
    finally:
        await closed.close()
    assert info.value.transient and not info.value.maybe_processed


def test_read_error_rules_are_validated() -> None:
    rules = parse_rules({"read_errors": {"status": 429, "after": 1, "count": 2}, "endless_list": True})
    assert [rules.read_errors.fails(n) for n in range(4)] == [False, True, True, False]
    assert parse_rules(rules.to_json()) == rules
    for bad in ({"status": 418}, {"status": 500, "count": -1}, {"state": 500}, "500"):
        with pytest.raises(RulesError):
            parse_rules({"read_errors": bad})
    with pytest.raises(RulesError):
        parse_rules({"endless_list": "yes"})


# ----- SyncFromTwilio -----


@pytest.mark.parametrize(
    ("rule", "code", "reason"),
    [
        ({"status": 401}, grpc.StatusCode.FAILED_PRECONDITION, Reason.TWILIO_CREDENTIALS_REJECTED),
        ({"status": 403}, grpc.StatusCode.FAILED_PRECONDITION, Reason.TWILIO_CREDENTIALS_REJECTED),
        ({"status": 429}, grpc.StatusCode.UNAVAILABLE, Reason.TWILIO_UNAVAILABLE),
        ({"status": 500}, grpc.StatusCode.UNAVAILABLE, Reason.TWILIO_UNAVAILABLE),
        ({"status": 500, "after": 1}, grpc.StatusCode.UNAVAILABLE, Reason.TWILIO_UNAVAILABLE),  # the next page
    ],
)
async def test_sync_from_twilio_answers_a_twilio_failure_with_its_status_and_reason(
    house: House, rule: dict[str, Any], code: grpc.StatusCode, reason: Reason
) -> None:
    house.set_rules(read_errors={**rule, "message": HUGE}, endless_list=True)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await sync(house, datetime.now(UTC) - timedelta(minutes=5))
    assert info.value.code() == code
    assert error_reason(info.value) == reason
    details = info.value.details() or ""
    assert "upstream error page" in details and len(details) < MAX_ERROR_TEXT + 100


async def test_sync_stops_at_the_page_cap_and_says_how_far_it_got(
    house: House, twilio: TwilioClient, caplog: pytest.LogCaptureFixture
) -> None:
    start = datetime.now(UTC) - timedelta(minutes=1)
    slow = {"lifecycle_ms": {"queued": 60_000}}  # the outbound stays queued: dated by its creation
    house.set_rules(**slow)
    ours_out = await twilio.create(unique_number(), "sent by us", [], "")
    sid = await inject_inbound(house, unique_number(), FROM_NUMBER, "behind an endless list")
    end = datetime.now(UTC) + timedelta(seconds=1)
    house.set_rules(endless_list=True, **slow)
    before = reads(house)
    with caplog.at_level(logging.WARNING, logger="server.worker.twilio_sync"):
        capped = await sync(house, start, end)
    assert not capped.complete
    assert capped.stop_reason == sms_pb2.SyncFromTwilioResponse.STOP_REASON_PAGE_LIMIT
    assert reads(house) - before == MAX_PAGES
    # Both lists (From and To our number) were read a page at a time, each back to its oldest message, and then
    # named empty next pages until the cap: the window is vouched for back to the later of the two.
    assert capped.created == 1 and await house.res.store.find_by_sid(sid) is not None
    listed = [m for m in house.sim.state.in_order() if start <= (m.date_sent or m.date_created) <= end]

    def oldest(number_of: Callable[[Any], str | None]) -> datetime:
        return min((m.date_sent or m.date_created) for m in listed if number_of(m) == FROM_NUMBER)

    expected = max(oldest(lambda m: m.from_), oldest(lambda m: m.to)).replace(microsecond=0)
    assert capped.reached_time.ToDatetime(tzinfo=UTC) == expected
    assert start < expected < end and ours_out.sid in {m.sid for m in listed}
    assert any("stopped early (page_limit)" in r.getMessage() for r in caplog.records)

    house.set_rules()
    done = await sync(house, start, end)
    assert done.complete and done.stop_reason == sms_pb2.SyncFromTwilioResponse.STOP_REASON_UNSPECIFIED
    assert done.reached_time.ToDatetime(tzinfo=UTC) == start
    assert done.created == 0


async def test_sync_stops_at_its_deadline(house: House) -> None:
    # Each page takes 0.6 s and the list never ends: the third page would finish after the 1.5 s deadline.
    house.set_rules(endless_list=True, latency_ms=600)
    before = reads(house)
    began = time.monotonic()
    result = await sync(house, datetime.now(UTC) - timedelta(minutes=1))
    took = time.monotonic() - began
    assert not result.complete
    assert result.stop_reason == sms_pb2.SyncFromTwilioResponse.STOP_REASON_DEADLINE
    assert DEADLINE_SECONDS <= took < DEADLINE_SECONDS + 1.0  # cut at the deadline, not at Twilio's own timeout
    # Three pages were asked for (0.6 s each against a 1.5 s deadline); the one cut short still reaches the
    # simulator after we gave up on it: wait for it, so it stays out of later tests' counts.
    await eventually_async(lambda: reads(house) - before, 5, "the cut-short page request", until=lambda n: n >= 3)


async def test_sync_imports_only_messages_of_our_numbers(house: House) -> None:
    start = datetime.now(UTC) - timedelta(seconds=5)
    ours = await inject_inbound(house, unique_number(), FROM_NUMBER, "to us")
    # The same account's other number: not ours to import.
    foreign = await inject_inbound(house, unique_number(), "+15005550099", "to another team's number")
    result = await sync(house, start)
    assert result.complete and result.created == 1
    assert await house.res.store.find_by_sid(ours) is not None
    assert await house.res.store.find_by_sid(foreign) is None


async def test_with_a_messaging_service_the_sync_reads_only_that_services_messages(
    mongo: EmbeddedServer, redis_server: EmbeddedServer
) -> None:
    service = "MG" + "1" * 32
    env = house_env(mongo.uri, redis_server.uri, TWILIO_FROM_NUMBER="", TWILIO_MESSAGING_SERVICE_SID=service)
    async with running_house(env) as ms_house:
        start = datetime.now(UTC) - timedelta(seconds=5)
        client = TwilioClient(ms_house.cfg)
        await client.start()
        try:
            # Twilio's list cannot filter by service: these two are listed too, and must not count as ours.
            await client.client.messages.create_async(to=unique_number(), from_="+15005550099", body="other number")
            await client.client.messages.create_async(
                to=unique_number(), messaging_service_sid="MG" + "2" * 32, body="other service"
            )
        finally:
            await client.close()
        contact = unique_number()
        sid = await inject_inbound(ms_house, contact, FROM_NUMBER, "to the service's number")
        result = await sync(ms_house, start)
        assert result.complete and result.scanned == 1 and result.created == 1
        doc = await ms_house.res.store.find_by_sid(sid)
        # Tagged with our service, it is in the conversation the webhook would have put it in.
        assert doc is not None and doc["conversation_id"] == conversation_id(service, contact)


# ----- the worker's settle -----


@pytest.mark.parametrize("status", [429, 500])
async def test_a_settle_that_cannot_read_twilio_counts_as_a_try_and_ends_failed(house: House, status: int) -> None:
    to = unique_number()
    # The create answers 500 (Twilio may have it: the attempt stays in flight), then every list answers `status`.
    house.set_rules(burst_500=1, read_errors={"status": status})
    message_id = await send(house, to, "settle me")
    before = reads(house)
    await house.work()
    doc = await stored(house, message_id)
    tries = house.cfg.send_max_tries
    assert doc["status"] == "failed" and doc["attempts"] == tries
    assert doc["error_code"] == 20000 + status and doc["last_error"]["code"] == 20000 + status
    assert "in_flight" not in doc or doc["in_flight"] is None
    assert reads(house) - before == tries - 1  # one settle per try after the create
    assert creates_to(house, to) == []
    # Nothing is left for the reconciler to bring back.
    assert message_id not in await house.res.store.stale_outbound(datetime.now(UTC) + timedelta(days=1), 10_000)


async def test_a_settle_refused_for_credentials_fails_at_once(house: House) -> None:
    to = unique_number()
    house.set_rules(burst_500=1, read_errors={"status": 401})
    message_id = await send(house, to, "bad credentials")
    await house.work()
    doc = await stored(house, message_id)
    assert doc["status"] == "failed" and doc["error_code"] == 20003 and doc["attempts"] == 2


# ----- a sid Twilio gave us, and the store -----


async def test_a_sid_is_recorded_once_the_store_is_back_without_asking_twilio_again(
    house: House, caplog: pytest.LogCaptureFixture
) -> None:
    to = unique_number()
    # Listing cannot rescue it either: only keeping the sid can.
    house.set_rules(read_errors={"status": 500})
    message_id = await send(house, to, "store blip after create")
    await refuse_sids_for(house, message_id)

    async def blip() -> None:
        await created_at_twilio(house, to)
        await asyncio.sleep(0.5)  # a few refused writes
        await accept_sids(house)

    before = reads(house)
    with caplog.at_level(logging.WARNING, logger="server.worker.sending"):
        await work_while(house, blip)
    doc = await stored(house, message_id)
    assert doc["twilio_sid"] == creates_to(house, to)[0] and len(creates_to(house, to)) == 1
    assert doc["status"] != "failed" and doc["attempts"] == 1
    assert reads(house) == before
    # The run itself kept writing until the store took it: the job was never deferred.
    messages = [r.getMessage() for r in caplog.records]
    assert any("storing that failed" in m for m in messages)
    assert not any("store error, retrying" in m for m in messages)


async def test_a_sid_outlives_a_store_outage_longer_than_the_run(house: House) -> None:
    to = unique_number()
    house.set_rules(read_errors={"status": 500})
    message_id = await send(house, to, "store outage after create")
    await refuse_sids_for(house, message_id)

    async def outage() -> None:
        await created_at_twilio(house, to)
        await asyncio.sleep(JOB_TIMEOUT_SECONDS)  # past the run's deadline: the job is deferred meanwhile
        await accept_sids(house)

    before = reads(house)
    await work_while(house, outage)
    doc = await stored(house, message_id)
    assert doc["twilio_sid"] == creates_to(house, to)[0] and len(creates_to(house, to)) == 1
    assert doc["attempts"] == 1 and doc["status"] != "failed"
    assert reads(house) == before


async def test_a_sid_another_message_owns_is_not_an_outage(house: House) -> None:
    """The sid Twilio answered is already another message's (that message's settle adopted the same text): this
    message settles its attempt again and, with no identical message left unowned, is sent as its next try."""
    user, to = unique_user(), unique_number()
    other = await send(house, to, "same words", user)
    # The other message is in the state of an attempt that never reached Twilio; no job of its own runs now.
    await house.res.arq.delete(f"arq:job:{other}")
    await house.res.arq.zrem(house.cfg.arq_queue, other)
    message_id = await send(house, to, "same words", user)
    await refuse_sids_for(house, message_id)

    async def adopted_by_the_other() -> None:
        (sid,) = await created_at_twilio(house, to)
        await house.res.store.messages.update_one({"_id": ObjectId(other)}, {"$set": {"twilio_sid": sid}})
        await accept_sids(house)

    await work_while(house, adopted_by_the_other)
    first, second = creates_to(house, to)
    assert (await stored(house, other))["twilio_sid"] == first
    doc = await stored(house, message_id)
    assert doc["twilio_sid"] == second and doc["attempts"] == 2 and doc["status"] != "failed"
