"""How the Twilio simulator posts webhooks: signing, connection overrides, retries, the attempt log.

Webhooks carry X-Twilio-Signature (over the URL without its #fragment) and an I-Twilio-Idempotency-Token
that retries and copies share. A URL fragment such as `#rc=3&rp=5xx` sets Twilio's connection overrides
(ct, rt, tt in ms; rc retries 0-5; rp 4xx, 5xx, ct, rt or all); by default one retry, on connect failure only.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urldefrag

import aiohttp
from twilio.request_validator import RequestValidator

from devstack.twilio_sim.shapes import now, rfc2822

log = logging.getLogger(__name__)

RETRY_POLICIES = ("4xx", "5xx", "ct", "rt")
RESPONSE_KEEP_CHARS = 2000


@dataclass(frozen=True)
class Overrides:
    """Twilio's connection overrides from a webhook URL's fragment (times in ms)."""

    connect_timeout_ms: int = 5000
    read_timeout_ms: int = 15000
    total_timeout_ms: int = 15000
    retry_count: int = 1
    retry_policy: frozenset[str] = frozenset({"ct"})


def _bounded(values: dict[str, list[str]], key: str, default: int, low: int, high: int) -> int:
    raw = values.get(key)
    if not raw:
        return default
    try:
        return min(high, max(low, int(raw[-1])))
    except ValueError:
        return default


def parse_overrides(fragment: str) -> Overrides:
    """Reads `ct`, `rt`, `tt`, `rc`, `rp` from a fragment such as `rc=3&rp=5xx,ct`; bad values keep defaults."""
    values = parse_qs(fragment, keep_blank_values=False)
    policy: set[str] = set()
    for raw in values.get("rp", []):
        for part in raw.split(","):
            part = part.strip().lower()
            if part == "all":
                policy.update(RETRY_POLICIES)
            elif part in RETRY_POLICIES:
                policy.add(part)
    return Overrides(
        connect_timeout_ms=_bounded(values, "ct", 5000, 100, 10000),
        read_timeout_ms=_bounded(values, "rt", 15000, 100, 15000),
        total_timeout_ms=_bounded(values, "tt", 15000, 100, 15000),
        retry_count=_bounded(values, "rc", 1, 0, 5),
        retry_policy=frozenset(policy) if policy else frozenset({"ct"}),
    )


@dataclass
class DeliveryResult:
    """How one webhook delivery (all its attempts) ended."""

    status: int | None
    attempts: int
    error: str | None
    body: str


def new_idempotency_token() -> str:
    """A fresh I-Twilio-Idempotency-Token value; retries and duplicates of one event share it."""
    return str(uuid.uuid4())


class WebhookPoster:
    """Posts signed form webhooks the way Twilio does and logs every attempt."""

    def __init__(self, auth_token: str, record: Callable[[dict[str, Any]], None]) -> None:
        self._validator = RequestValidator(auth_token)
        self._record = record
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        """Creates the HTTP session (inside the running loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"User-Agent": "TwilioProxy/1.1"}, auto_decompress=True)

    async def close(self) -> None:
        """Closes the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def sign(self, url: str, params: Mapping[str, str]) -> str:
        """X-Twilio-Signature for `params` posted to `url` (fragment already removed)."""
        return str(self._validator.compute_signature(url, dict(params)))

    async def deliver(
        self,
        kind: str,
        sid: str,
        configured_url: str,
        params: Mapping[str, str],
        token: str,
        semaphore: asyncio.Semaphore,
        backoff_ms: int,
        copy: int = 1,
    ) -> DeliveryResult:
        """Posts `params` to `configured_url`, retrying as its fragment's overrides say."""
        # Twilio never sends the fragment: it only configures the connection, and the signature covers
        # the URL the receiver actually sees.
        url, fragment = urldefrag(configured_url)
        overrides = parse_overrides(fragment)
        signature = self.sign(url, params)
        headers = {
            "X-Twilio-Signature": signature,
            "I-Twilio-Idempotency-Token": token,
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "*/*",
        }
        timeout = aiohttp.ClientTimeout(
            total=overrides.total_timeout_ms / 1000,
            sock_connect=overrides.connect_timeout_ms / 1000,
            sock_read=overrides.read_timeout_ms / 1000,
        )
        attempt = 0
        result = DeliveryResult(status=None, attempts=0, error="not attempted", body="")
        while True:
            attempt += 1
            failure: str | None
            status: int | None = None
            body = ""
            error: str | None = None
            async with semaphore:
                await self.open()
                assert self._session is not None
                try:
                    async with self._session.post(
                        url, data=dict(params), headers=headers, timeout=timeout, allow_redirects=False
                    ) as resp:
                        status = resp.status
                        body = (await resp.text(errors="replace"))[:RESPONSE_KEEP_CHARS]
                except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                    error = f"connect failed: {exc.__class__.__name__}"
                except (TimeoutError, aiohttp.ClientError) as exc:
                    error = f"read failed: {exc.__class__.__name__}"
            if status is not None:
                failure = "4xx" if 400 <= status < 500 else "5xx" if status >= 500 else None
            else:
                failure = "ct" if error and error.startswith("connect") else "rt"
            self._record(
                {
                    "kind": kind,
                    "sid": sid,
                    "url": url,
                    "configured_url": configured_url,
                    "params": dict(params),
                    "signature": signature,
                    "idempotency_token": token,
                    "attempt": attempt,
                    "copy": copy,
                    "status": status,
                    "error": error,
                    "at": rfc2822(now()),
                }
            )
            result = DeliveryResult(status=status, attempts=attempt, error=error, body=body)
            if failure is None:
                return result
            if attempt > overrides.retry_count or failure not in overrides.retry_policy:
                log.warning(
                    "%s webhook for %s to %s gave up after %d attempt(s): %s", kind, sid, url, attempt, error or status
                )
                return result
            await asyncio.sleep(backoff_ms * attempt / 1000)
