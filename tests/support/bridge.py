"""A webhook bridge process for tests and benchmarks: starting one, posting to it as Twilio would, reading it."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from twilio.request_validator import RequestValidator

from server.embedded import free_port
from tests.support.identities import bridge_env
from tests.support.launch import start_listening
from tests.support.processes import SMS_GATEWAY, ChildProcess

AUTH_TOKEN = "bridge-test-auth-token"
# The bridge sits behind a proxy that strips /hooks: Twilio signs the public URL, the bridge sees the path.
PUBLIC_BASE = "https://sms.example.test/hooks"
ACCOUNT_SID = "AC" + "0" * 32
OUR_NUMBER = "+15005550006"


def new_sid(prefix: str = "SM") -> str:
    return prefix + uuid.uuid4().hex


@dataclass
class Bridge:
    """A running bridge process and how to reach it."""

    proc: ChildProcess
    url: str  # where the test connects
    public_base: str  # what Twilio would have called
    token: str

    def signed(
        self, path: str, params: Mapping[str, str], *, token: str | None = None, public_base: str | None = None
    ) -> dict[str, str]:
        """Headers Twilio would send for `params` posted to `path`."""
        url = (public_base or self.public_base) + path
        return {"X-Twilio-Signature": RequestValidator(token or self.token).compute_signature(url, params)}


def start_bridge(base_env: Mapping[str, str], grpc_target: str, **extra: str) -> Bridge:
    """A bridge process in front of `grpc_target`, holding only the ingest key of `base_env`."""
    port = free_port()
    env = {
        **base_env,
        "SMS_BRIDGE_ADDR": f"127.0.0.1:{port}",
        "SMS_GRPC_TARGET": grpc_target,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "SMS_PUBLIC_BASE_URL": PUBLIC_BASE,
        **extra,
    }
    proc = start_listening("bridge", [*SMS_GATEWAY, "bridge"], bridge_env(env), "127.0.0.1", port)
    return Bridge(proc, f"http://127.0.0.1:{port}", PUBLIC_BASE, AUTH_TOKEN)


@dataclass
class Answer:
    status: int
    text: str
    headers: Mapping[str, str]


async def post(
    http: aiohttp.ClientSession,
    bridge: Bridge,
    path: str,
    params: Mapping[str, str],
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """Posts `params` as Twilio would, signed unless `headers` is given."""
    hdrs = dict(bridge.signed(path, params) if headers is None else headers)
    async with http.post(bridge.url + path, data=dict(params), headers=hdrs) as resp:
        return Answer(resp.status, await resp.text(), dict(resp.headers))


def inbound_params(sid: str, from_number: str, body: str = "hello", **extra: str) -> dict[str, str]:
    return {
        "MessageSid": sid,
        "SmsSid": sid,
        "SmsMessageSid": sid,
        "AccountSid": ACCOUNT_SID,
        "From": from_number,
        "To": OUR_NUMBER,
        "Body": body,
        "NumMedia": "0",
        "NumSegments": "1",
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
        "FromCity": "SAN FRANCISCO",
        **extra,
    }


def status_params(sid: str, status: str, **extra: str) -> dict[str, str]:
    return {
        "MessageSid": sid,
        "SmsSid": sid,
        "AccountSid": ACCOUNT_SID,
        "From": OUR_NUMBER,
        "To": "+14155550100",
        "MessageStatus": status,
        "SmsStatus": status,
        "ApiVersion": "2010-04-01",
        **extra,
    }


_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _series_key(series: str) -> tuple[str, frozenset[tuple[str, str]]]:
    """A series' name and label set: the same series whatever order the exposition writes its labels in."""
    name, _, labels = series.partition("{")
    return name, frozenset(_LABEL.findall(labels))


async def metric(http: aiohttp.ClientSession, bridge: Bridge, series: str) -> float:
    """The value of one series, e.g. 'sms_bridge_posts_total{route="inbound",outcome="stored"}' (0 when absent).

    Labels match in any order: prometheus_client writes them sorted by name.
    """
    async with http.get(bridge.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    wanted = _series_key(series)
    for line in text.splitlines():
        if line and not line.startswith("#"):
            head, _, value = line.rpartition(" ")
            if _series_key(head) == wanted:
                return float(value)
    return 0.0


async def healthz(http: aiohttp.ClientSession, bridge: Bridge) -> int:
    async with http.get(bridge.url + "/healthz") as resp:
        return resp.status
