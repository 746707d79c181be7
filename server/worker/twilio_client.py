"""The Twilio REST client of the worker and the admin: bounded in time and concurrency, errors made domain results.

Every request holds one slot of a semaphore of TWILIO_MAX_CONCURRENCY and is bounded by
TWILIO_TIMEOUT_SECONDS (twilio-python sets no total timeout). The bound is per process: N worker processes may
have N * TWILIO_MAX_CONCURRENCY requests open against the account's REST concurrency limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import aiohttp

from server.config import Config
from server.timeutil import aware

log = logging.getLogger(__name__)
# twilio-python logs every request and response at INFO; keep that out of the worker's log unless asked for.
http_log = logging.getLogger(__name__ + ".http")
http_log.setLevel(logging.WARNING)

T = TypeVar("T")

# Twilio codes that mean "not processed, try again later" although the HTTP status is a 4xx.
TOO_MANY_REQUESTS = 20429
SENDER_QUEUE_FULL = 21611
TRANSIENT_CODES = frozenset({TOO_MANY_REQUESTS, SENDER_QUEUE_FULL})
AUTH_FAILED = 20003
_CREATE_PREFIX = "Unable to create record: "
_FETCH_PREFIX = "Unable to fetch page: "


class TwilioFailure(Exception):
    """A Twilio request that did not succeed, classified for the retry rules (design.md rule 4).

    `transient`: worth retrying. `maybe_processed`: Twilio may have acted on the request although we saw an
    error (a timeout, a dropped connection, a 5xx), so a create must be settled before it is sent again.
    """

    def __init__(
        self, code: int, message: str, *, transient: bool, maybe_processed: bool, http_status: int = 0
    ) -> None:
        super().__init__(f"{code or http_status or 'no code'}: {message}")
        self.code = code
        self.message = message
        self.transient = transient
        self.maybe_processed = maybe_processed
        self.http_status = http_status


@dataclass(frozen=True)
class TwilioMessage:
    """The fields of a Twilio Message resource that sms-gateway uses."""

    sid: str
    status: str
    direction: str
    from_: str
    to: str
    body: str
    segments: int
    num_media: int
    price: str | None
    price_unit: str | None
    error_code: int
    error_message: str
    date_created: datetime | None
    date_sent: datetime | None

    @classmethod
    def of(cls, inst: Any) -> TwilioMessage:
        """From twilio-python's MessageInstance."""
        return cls(
            sid=str(inst.sid or ""),
            status=str(inst.status or ""),
            direction=str(inst.direction or ""),
            from_=str(inst.from_ or ""),
            to=str(inst.to or ""),
            body=str(inst.body or ""),
            segments=_int(inst.num_segments),
            num_media=_int(inst.num_media),
            price=inst.price,
            price_unit=inst.price_unit,
            error_code=_int(inst.error_code),
            error_message=str(inst.error_message or ""),
            date_created=aware(inst.date_created) if isinstance(inst.date_created, datetime) else None,
            date_sent=aware(inst.date_sent) if isinstance(inst.date_sent, datetime) else None,
        )


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def classify(exc: BaseException, timeout: float) -> TwilioFailure:
    """Maps an exception from a Twilio call to a TwilioFailure; re-raises what is not a Twilio/network error."""
    from twilio.base.exceptions import TwilioRestException, TwilioServiceException

    if isinstance(exc, TwilioFailure):
        return exc
    if isinstance(exc, TimeoutError):
        return TwilioFailure(0, f"Twilio did not answer within {timeout:g} s", transient=True, maybe_processed=True)
    if isinstance(exc, TwilioRestException | TwilioServiceException):
        status = int(getattr(exc, "status", 0) or 0)
        code = _int(getattr(exc, "code", 0)) or status
        message = str(getattr(exc, "msg", "") or getattr(exc, "detail", "") or getattr(exc, "title", "") or exc)
        message = message.removeprefix(_CREATE_PREFIX).removeprefix(_FETCH_PREFIX)
        if status == 429 or code in TRANSIENT_CODES:
            # Rejected before processing: safe to send again.
            return TwilioFailure(code, message, transient=True, maybe_processed=False, http_status=status)
        if status >= 500:
            # A 5xx (or a proxy's 502/504) does not prove that nothing was created.
            return TwilioFailure(code, message, transient=True, maybe_processed=True, http_status=status)
        return TwilioFailure(code, message, transient=False, maybe_processed=False, http_status=status)
    if isinstance(exc, aiohttp.ClientConnectorError):
        # The connection was never made, so the request never reached Twilio.
        return TwilioFailure(0, f"cannot connect to Twilio: {exc}", transient=True, maybe_processed=False)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return TwilioFailure(
            0, f"network error talking to Twilio: {exc.__class__.__name__}: {exc}", transient=True, maybe_processed=True
        )
    raise exc


class TwilioClient:
    """One twilio-python async client per process, shared by every job; call `start` inside the event loop."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.timeout = cfg.twilio_timeout_seconds
        self.limit = asyncio.Semaphore(cfg.twilio_max_concurrency)
        self._client: Any = None
        self._http: Any = None

    async def start(self) -> None:
        """Creates the HTTP session (aiohttp wants a running loop) and the client."""
        from twilio.http.async_http_client import AsyncTwilioHttpClient
        from twilio.rest import Client

        self._http = AsyncTwilioHttpClient(logger=http_log)
        client = Client(self.cfg.twilio_account_sid, self.cfg.twilio_auth_token, http_client=self._http)
        if self.cfg.twilio_api_base_url:
            client.api.base_url = self.cfg.twilio_api_base_url.rstrip("/")
        self._client = client

    async def close(self) -> None:
        if self._http is not None:
            with contextlib.suppress(Exception):
                await self._http.close()
            self._http = None
            self._client = None

    @property
    def client(self) -> Any:
        if self._client is None:
            raise RuntimeError("TwilioClient.start() was not awaited")
        return self._client

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Runs one request in a concurrency slot under the timeout; raises TwilioFailure."""
        async with self.limit:
            try:
                return await asyncio.wait_for(make(), self.timeout)
            except (Exception, TimeoutError) as exc:
                raise classify(exc, self.timeout) from exc

    async def create(self, to: str, body: str, media_urls: Sequence[str], status_callback: str) -> TwilioMessage:
        """Creates the message with our sender (From or MessagingServiceSid) and status callback URL."""
        kwargs: dict[str, Any] = {"to": to, "status_callback": status_callback}
        if self.cfg.twilio_from_number:
            kwargs["from_"] = self.cfg.twilio_from_number
        else:
            kwargs["messaging_service_sid"] = self.cfg.twilio_messaging_service_sid
        if body:
            kwargs["body"] = body
        if media_urls:
            kwargs["media_url"] = list(media_urls)
        inst = await self._call(lambda: self.client.messages.create_async(**kwargs))
        return TwilioMessage.of(inst)

    async def messages(
        self,
        *,
        to: str | None = None,
        from_: str | None = None,
        sent_after: datetime | str | None = None,
        sent_before: datetime | str | None = None,
        page_size: int = 100,
        max_pages: int | None = None,
    ) -> AsyncIterator[TwilioMessage]:
        """Twilio's message list (newest first), page by page; each page is one bounded request."""
        kwargs: dict[str, Any] = {"page_size": page_size}
        if to:
            kwargs["to"] = to
        if from_:
            kwargs["from_"] = from_
        if sent_after is not None:
            kwargs["date_sent_after"] = sent_after
        if sent_before is not None:
            kwargs["date_sent_before"] = sent_before
        messages = self.client.messages
        page = await self._call(lambda: messages.page_async(**kwargs))
        pages = 1
        while True:
            for inst in page:
                yield TwilioMessage.of(inst)
            url = page.next_page_url
            if not url or (max_pages is not None and pages >= max_pages):
                return
            page = await self._call(functools.partial(messages.get_page_async, url))
            pages += 1
