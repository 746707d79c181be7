"""The webhook bridge under hostile input and slow clients: never a 500, never an endless 503, no slot held forever.

A real bridge process (read timeout 1 s, at most CAP connections) in front of the session's server; the slow
clients are real sockets.
"""

from __future__ import annotations

import asyncio
import gzip
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import aiohttp
import pytest

from server.documents import params_of
from tests.support.bridge import Bridge, inbound_params, metric, new_sid, post, start_bridge, status_params
from tests.support.identities import unique_number
from tests.support.polling import eventually_async
from webhook_bridge.forms import FormError, inbound_request, parse_form

READ_TIMEOUT = 1.0
CAP = 6
FORM = "application/x-www-form-urlencoded"


@pytest.fixture(scope="module")
def hardened(base_env: dict[str, str], grpc_server: str) -> Iterator[Bridge]:
    b = start_bridge(
        base_env,
        grpc_server,
        SMS_BRIDGE_READ_TIMEOUT_SECONDS=str(READ_TIMEOUT),
        SMS_BRIDGE_MAX_CONNECTIONS=str(CAP),
    )
    yield b
    assert b.proc.stop() == 0, b.proc.log()[-3000:]
    # No request ended in aiohttp's own 500 handler (which logs the handler's traceback).
    assert "Traceback" not in b.proc.log() and "ERROR" not in b.proc.log()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """One connection per request: no idle keep-alive connection takes a slot or meets the idle timeout."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def unsafe_field_names(value: Any) -> list[str]:
    """Every field name in a document, at any depth, that starts with `$` or holds a dot."""
    if isinstance(value, dict):
        own = [k for k in value if k.startswith("$") or "." in k]
        return own + [name for v in value.values() for name in unsafe_field_names(v)]
    if isinstance(value, list):
        return [name for v in value for name in unsafe_field_names(v)]
    return []


def encode(params: Mapping[str, str]) -> bytes:
    return urllib.parse.urlencode(params).encode()


async def post_body(
    client: aiohttp.ClientSession, bridge: Bridge, path: str, params: Mapping[str, str], body: bytes, **headers: str
) -> int:
    """Posts `body` with the signature of `params` (what Twilio would sign) and the given headers."""
    hdrs = {**bridge.signed(path, params), "Content-Type": FORM, **headers}
    async with client.post(bridge.url + path, data=body, headers=hdrs) as resp:
        return resp.status


# ---------------------------------------------------------------------------------------------------------
# Input


def test_int32_bounds_of_the_form() -> None:
    form = parse_form(encode({"MessageSid": "SM1", "From": "+14155550100", "To": "+15005550006", "NumSegments": "0"}))
    for edge in ("2147483647", "-2147483648"):
        edged = parse_form(encode({**form, "NumSegments": edge}))
        assert inbound_request(edged).num_segments == int(edge)
    for over in ("2147483648", "-2147483649", "9" * 40):
        with pytest.raises(FormError, match="NumSegments is out of range"):
            inbound_request(parse_form(encode({**form, "NumSegments": over})))


async def test_numbers_outside_int32_are_400(client: aiohttp.ClientSession, hardened: Bridge, db: Any) -> None:
    sid = new_sid()
    answer = await post(client, hardened, "/twilio/inbound", inbound_params(sid, unique_number(), NumSegments="2" * 12))
    assert answer.status == 400, answer.text
    assert "out of range" in answer.text and "2" * 12 not in answer.text
    assert await db.messages.count_documents({"twilio_sid": sid}) == 0
    for code in ("2147483648", "-2147483649"):
        answer = await post(client, hardened, "/twilio/status", status_params(new_sid(), "failed", ErrorCode=code))
        assert answer.status == 400, answer.text


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),  # a well-formed gzip of a well-formed, signed form
        ("gzip", lambda body: b"not gzip at all"),  # today: aiohttp's decoding error, a 500
        ("deflate", lambda body: b"\x00\x01garbage"),
        ("br", lambda body: b"garbage"),
        ("zstd", lambda body: b"garbage"),
        ("x-unheard-of", lambda body: body),
        ("identity, gzip", gzip.compress),
    ],
    ids=["gzip", "bad gzip", "bad deflate", "br", "zstd", "unknown", "chained"],
)
async def test_a_content_encoding_is_400_before_anything_else(
    client: aiohttp.ClientSession, hardened: Bridge, db: Any, encoding: str, compress: Any
) -> None:
    sid = new_sid()
    params = inbound_params(sid, unique_number())
    status = await post_body(
        client, hardened, "/twilio/inbound", params, compress(encode(params)), **{"Content-Encoding": encoding}
    )
    assert status == 400
    assert await db.messages.count_documents({"twilio_sid": sid}) == 0


async def test_identity_encoding_is_a_plain_form(client: aiohttp.ClientSession, hardened: Bridge, db: Any) -> None:
    sid = new_sid()
    params = inbound_params(sid, unique_number())
    assert (
        await post_body(client, hardened, "/twilio/inbound", params, encode(params), **{"Content-Encoding": "identity"})
        == 200
    )
    assert await db.messages.count_documents({"twilio_sid": sid}) == 1


async def test_a_nul_in_a_parameter_name_is_400_not_an_endless_503(
    client: aiohttp.ClientSession, hardened: Bridge, db: Any
) -> None:
    sid = new_sid()
    params = inbound_params(sid, unique_number(), **{"Geo\x00Key": "x"})
    before = await metric(client, hardened, 'sms_bridge_posts_total{route="inbound",outcome="bad_request"}')
    for _ in range(2):  # Twilio's retry gets the same answer: final, not "try again"
        assert await post_body(client, hardened, "/twilio/inbound", params, encode(params)) == 400
    assert await metric(client, hardened, 'sms_bridge_posts_total{route="inbound",outcome="bad_request"}') == before + 2
    assert await db.messages.count_documents({"twilio_sid": sid}) == 0


async def test_operator_like_parameter_names_are_stored_as_data(
    client: aiohttp.ClientSession, hardened: Bridge, db: Any
) -> None:
    sid = new_sid()
    odd = {"$where": "sleep(1000)", "a.b": "dotted", "$set.owner": "eve", "_id": "not-an-id", "x.$y": ""}
    answer = await post(client, hardened, "/twilio/inbound", inbound_params(sid, unique_number(), **odd))
    assert answer.status == 200, answer.text
    msg = await db.messages.find_one({"twilio_sid": sid})
    assert msg is not None
    stored = params_of(msg)
    assert {k: stored[k] for k in odd} == odd
    assert stored["FromCity"] == "SAN FRANCISCO"
    # Names are values in the document, never field names (MongoDB before 5.0 refuses such names, and `$`- or
    # dot-named fields are ambiguous in queries and updates); the message's own fields are untouched.
    assert not unsafe_field_names(msg)
    assert msg["owner"] != "eve" and str(msg["_id"]) != "not-an-id"
    # A replay (Twilio's retry) is a duplicate of the stored message, not a failure.
    again = await post(client, hardened, "/twilio/inbound", inbound_params(sid, unique_number(), **odd))
    assert again.status == 200
    assert await db.messages.count_documents({"twilio_sid": sid}) == 1


# ---------------------------------------------------------------------------------------------------------
# Slow and surplus clients, over real sockets


async def open_raw(bridge: Bridge) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = bridge.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def closed_after(reader: asyncio.StreamReader, within: float) -> tuple[float, bytes]:
    """Seconds until the server closed the connection, and what it sent before."""
    started = time.monotonic()
    received = await asyncio.wait_for(reader.read(), within)  # read() returns at EOF
    return time.monotonic() - started, received


async def trickle(writer: asyncio.StreamWriter, data: bytes, pause: float) -> None:
    """Sends `data` a byte at a time: progress that must not keep the connection alive."""
    try:
        for byte in data:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(pause)
    except ConnectionError:
        return


PARTIAL_HEADERS = (
    b"POST /twilio/inbound HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/x-www-form-urlencoded\r\n"
)


async def test_slow_headers_are_cut_off_while_posts_go_on(client: aiohttp.ClientSession, hardened: Bridge) -> None:
    series = "sms_bridge_connections_timed_out_total"
    before = await metric(client, hardened, series)
    silent = await open_raw(hardened)
    partial = await open_raw(hardened)
    partial[1].write(PARTIAL_HEADERS)
    slow = await open_raw(hardened)
    dripping = asyncio.create_task(trickle(slow[1], PARTIAL_HEADERS * 10, 0.1))
    try:
        # While they hang on, a real post goes through at once.
        started = time.monotonic()
        sid = new_sid()
        assert (await post(client, hardened, "/twilio/inbound", inbound_params(sid, unique_number()))).status == 200
        assert time.monotonic() - started < READ_TIMEOUT
        for reader, _ in (silent, partial, slow):
            waited, received = await closed_after(reader, READ_TIMEOUT + 5)
            assert received == b""  # closed, no answer: there was no request to answer
            assert waited < READ_TIMEOUT + 2
    finally:
        dripping.cancel()
        for _, writer in (silent, partial, slow):
            writer.close()
    assert await metric(client, hardened, series) == before + 3


async def test_a_slow_body_gets_408_and_the_connection_closes(hardened: Bridge, db: Any) -> None:
    sid = new_sid()
    body = encode(inbound_params(sid, unique_number()))
    reader, writer = await open_raw(hardened)
    try:
        writer.write(
            b"POST /twilio/inbound HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        waited, received = await closed_after(reader, READ_TIMEOUT + 15)
    finally:
        writer.close()
    assert received.startswith(b"HTTP/1.1 408"), received[:100]
    assert READ_TIMEOUT * 0.8 < waited
    assert await db.messages.count_documents({"twilio_sid": sid}) == 0


@pytest.mark.parametrize(("split", "expected"), [(False, b" 400 Bad Request"), (True, b" 408 Request Timeout")])
async def test_a_malformed_chunked_body_is_a_4xx(hardened: Bridge, split: bool, expected: bytes) -> None:
    """aiohttp answers a bad chunk in the first packet itself; one that comes later is never delivered to the
    route, whose read is then cut by the body timeout instead of waiting forever."""
    reader, writer = await open_raw(hardened)
    try:
        head = (
            b"POST /twilio/inbound HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        bad_chunk = b"zz\r\nMessageSid=SM1\r\n0\r\n\r\n"
        if split:
            writer.write(head)
            await writer.drain()
            await asyncio.sleep(0.2)  # the route is reading the body when the bad chunk arrives
            writer.write(bad_chunk)
        else:
            writer.write(head + bad_chunk)  # one write, one packet: two writes could arrive apart under load
        _, received = await closed_after(reader, READ_TIMEOUT + 5)
    finally:
        writer.close()
    assert received.split(b"\r\n")[0].endswith(expected), received[:100]
    if not split:
        # Logged as one warning line (the fixture checks that no traceback was logged).
        await eventually_async(
            lambda: "WARNING aiohttp.server: Error handling request from 127.0.0.1: " in hardened.proc.log(),
            5,
            "the warning",
        )


async def test_connections_over_the_cap_are_refused_until_slots_free(
    client: aiohttp.ClientSession, hardened: Bridge, db: Any
) -> None:
    refused_series = "sms_bridge_connections_refused_total"
    before = await metric(client, hardened, refused_series)
    held = [await open_raw(hardened) for _ in range(CAP)]
    try:
        for _, writer in held:
            writer.write(PARTIAL_HEADERS)
            await writer.drain()
        # The server accepts in order: once the last held one is counted, the next is over the cap.
        await asyncio.sleep(0.2)
        extra_reader, extra_writer = await open_raw(hardened)
        _, received = await closed_after(extra_reader, READ_TIMEOUT)  # at once, not after the timeout
        extra_writer.close()
        assert received.startswith(b"HTTP/1.1 503") and b"Retry-After" in received, received[:100]
        # Every slot frees itself within the read timeout; then posts go through again.
        for reader, _ in held:
            await closed_after(reader, READ_TIMEOUT + 5)
    finally:
        for _, writer in held:
            writer.close()
    sid = new_sid()
    assert (await post(client, hardened, "/twilio/inbound", inbound_params(sid, unique_number()))).status == 200
    assert await db.messages.count_documents({"twilio_sid": sid}) == 1
    assert await metric(client, hardened, refused_series) == before + 1


async def test_a_keep_alive_client_is_served_then_idled_out(hardened: Bridge) -> None:
    async with aiohttp.ClientSession() as session:  # keeps its connection between requests
        params = inbound_params(new_sid(), unique_number())
        for _ in range(3):
            assert (await post(session, hardened, "/twilio/inbound", params)).status == 200
    reader, writer = await open_raw(hardened)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"serving\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        # Answered; an idle connection then gets the same read timeout for its next request.
        waited, rest = await closed_after(reader, READ_TIMEOUT + 5)
        assert rest == b"" and waited < READ_TIMEOUT + 2
    finally:
        writer.close()
