"""The Twilio REST client of the worker and the admin: bounded in time and concurrency, errors made domain results.

Every request holds one slot of a semaphore of TWILIO_MAX_CONCURRENCY and is bounded by
TWILIO_TIMEOUT_SECONDS (twilio-python sets no total timeout). The bound is per process: N worker processes may
have N * TWILIO_MAX_CONCURRENCY requests open against the account's REST concurrency limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp

from server.config import Config
from server.metrics import TWILIO_REQUEST_SECONDS, TWILIO_REQUESTS
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
# HTTP statuses Twilio answers for credentials it does not accept (or an account that may not do this).
CREDENTIAL_STATUSES = frozenset({401, 403})
_CREATE_PREFIX = "Unable to create record: "
_FETCH_PREFIX = "Unable to fetch page: "
# Error text from Twilio (or a proxy in front of it) is quoted at most this long: it ends up in logs, in stored
# messages' last_error and in RPC errors, and an error page may be any size.
MAX_ERROR_TEXT = 200
# A larger error body is not parsed for its code and message (Twilio's error JSON is small).
MAX_ERROR_BODY = 1024 * 1024


class TwilioFailure(Exception):
    """A Twilio request that did not succeed, classified for the retry rules (design.md rule 4).

    `transient`: worth retrying. `maybe_processed`: Twilio may have acted on the request although we saw an
    error (a timeout, a dropped connection, a 5xx), so a create must be settled before it is sent again.
    """

    def __init__(
        self, code: int, message: str, *, transient: bool, maybe_processed: bool, http_status: int = 0
    ) -> None:
        message = bounded(message)
        super().__init__(f"{code or http_status or 'no code'}: {message}")
        self.code = code
        self.message = message
        self.transient = transient
        self.maybe_processed = maybe_processed
        self.http_status = http_status

    @property
    def credentials_refused(self) -> bool:
        """Twilio does not accept the account sid and auth token (or they may not do this): an operator's fix."""
        return self.http_status in CREDENTIAL_STATUSES or self.code == AUTH_FAILED


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
    messaging_service_sid: str = ""

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
            messaging_service_sid=str(inst.messaging_service_sid or ""),
        )

    @property
    def moment(self) -> datetime | None:
        """When it was sent (or, not sent yet, created): the time a sync window and DateSent filter go by."""
        return self.date_sent or self.date_created


@dataclass(frozen=True)
class TwilioPage:
    """One page of Twilio's message list; `more` when Twilio names a next page."""

    messages: list[TwilioMessage]
    more: bool


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def bounded(text: str) -> str:
    """`text` on one line, cut to MAX_ERROR_TEXT characters."""
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 1] + "…"


def classify(exc: BaseException, timeout: float) -> TwilioFailure:
    """Maps an exception from a Twilio call to a TwilioFailure; re-raises what is not a Twilio/network error."""
    from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException

    if isinstance(exc, TwilioFailure):
        return exc
    if isinstance(exc, TimeoutError):
        return TwilioFailure(0, f"Twilio did not answer within {timeout:g} s", transient=True, maybe_processed=True)
    if isinstance(exc, TwilioRestException | TwilioServiceException):
        status = int(getattr(exc, "status", 0) or 0)
        code = _int(getattr(exc, "code", 0)) or status
        message = str(getattr(exc, "msg", "") or getattr(exc, "detail", "") or getattr(exc, "title", "") or exc)
        return by_status(status, code, message.removeprefix(_CREATE_PREFIX).removeprefix(_FETCH_PREFIX))
    if isinstance(exc, TwilioException):
        # A list or next-page request that did not answer 200: twilio-python raises a bare
        # TwilioException("Unable to fetch page", response) (twilio/base/page.py), whose text is the whole body.
        response = exc.args[1] if len(exc.args) > 1 else None
        answered = getattr(response, "status_code", None)
        if isinstance(answered, int):
            code, message = _error_body(str(getattr(response, "text", "") or ""))
            return by_status(answered, code or answered, message or f"Twilio answered HTTP {answered}")
        return _unreadable(exc)
    if isinstance(exc, json.JSONDecodeError):
        return _unreadable(exc)
    if isinstance(exc, aiohttp.ClientConnectorError):
        # The connection was never made, so the request never reached Twilio.
        return TwilioFailure(0, f"cannot connect to Twilio: {exc}", transient=True, maybe_processed=False)
    if isinstance(exc, aiohttp.ClientError | OSError):
        return TwilioFailure(
            0, f"network error talking to Twilio: {exc.__class__.__name__}: {exc}", transient=True, maybe_processed=True
        )
    raise exc


def by_status(status: int, code: int, message: str) -> TwilioFailure:
    """The failure of a request Twilio answered with HTTP `status` and error `code` (design.md rule 4)."""
    if status == 429 or code in TRANSIENT_CODES:
        # Rejected before processing: safe to send again.
        return TwilioFailure(code, message, transient=True, maybe_processed=False, http_status=status)
    if status >= 500:
        # A 5xx (or a proxy's 502/504) does not prove that nothing was created.
        return TwilioFailure(code, message, transient=True, maybe_processed=True, http_status=status)
    return TwilioFailure(code, message, transient=False, maybe_processed=False, http_status=status)


def _error_body(text: str) -> tuple[int, str]:
    """Twilio's error code and message from an error body: its legacy JSON or RFC 9457; (0, "") otherwise."""
    if len(text) > MAX_ERROR_BODY:
        return 0, ""
    try:
        body = json.loads(text)
    except ValueError:
        return 0, ""
    if not isinstance(body, dict):
        return 0, ""
    message = body.get("message") or body.get("detail") or body.get("title") or ""
    return _int(body.get("code")), str(message)


def _unreadable(exc: Exception) -> TwilioFailure:
    # A body that is not Twilio's JSON (a proxy's page, a cut connection): Twilio may have acted on the request.
    return TwilioFailure(
        0, f"Twilio's answer could not be read: {exc.__class__.__name__}", transient=True, maybe_processed=True
    )


def request_operation(method: str, url: str) -> str:
    """sms_twilio_requests_total's operation of an HTTP request to Twilio's Messages API: create (POST), list (GET
    of the collection, a next page included), fetch (GET of one resource), other."""
    method = method.upper()
    if method == "POST":
        return "create"
    if method == "GET":
        return "list" if urlsplit(url).path.endswith("/Messages.json") else "fetch"
    return "other"


@dataclass
class _Request:
    """The Twilio request in flight in this task: what sms_twilio_requests_total records once it ends."""

    operation: str
    started: float


# Set by the HTTP client's log_request hook and cleared by its log_response hook, or, for a request that got no
# answer, by the end of the call (`_metered`). Each call runs in a task of its own (asyncio.wait_for's), so
# concurrent requests never see each other's.
_in_flight: ContextVar[_Request | None] = ContextVar("twilio_request", default=None)


def _record(request: _Request, status: str) -> None:
    TWILIO_REQUESTS.labels(request.operation, status).inc()
    TWILIO_REQUEST_SECONDS.labels(request.operation).observe(time.perf_counter() - request.started)


def meter(http: Any) -> None:
    """Has twilio-python's HTTP client `http` record each request's operation, HTTP status and duration.

    Through its log_request and log_response hooks, which it calls around every request with the method, the URL
    and the real status (twilio-python raises without it for some answers, and says nothing of a 2xx): a wait for
    a concurrency slot is not counted, and no frame of ours sits between twilio-python and aiohttp (a wrapper of
    `request` there would take over the DeprecationWarnings aiohttp attributes to twilio-python). A status outside
    100..599 is "other"; a request that got no answer is recorded as "error" by `_metered`.
    """
    log_request, log_response = http.log_request, http.log_response

    def on_request(kwargs: dict[str, Any]) -> None:
        log_request(kwargs)
        _in_flight.set(_Request(request_operation(str(kwargs["method"]), str(kwargs["url"])), time.perf_counter()))

    def on_response(status_code: int, response: Any) -> None:
        log_response(status_code, response)
        request = _in_flight.get()
        if request is not None:
            _in_flight.set(None)
            ok = isinstance(status_code, int) and 100 <= status_code <= 599
            _record(request, str(status_code) if ok else "other")

    http.log_request, http.log_response = on_request, on_response


async def _metered(call: Awaitable[T]) -> T:
    """Awaits `call`, then records a request it started and that got no answer (a network error, our timeout)."""
    try:
        return await call
    finally:
        request = _in_flight.get()
        if request is not None:
            _in_flight.set(None)
            _record(request, "error")


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
        if self.cfg.metrics_enabled:
            meter(self._http)
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
                # _metered inside wait_for's task: it sees the request the hooks marked there (see meter).
                return await asyncio.wait_for(_metered(make()), self.timeout)
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

    async def pages(
        self,
        *,
        to: str | None = None,
        from_: str | None = None,
        sent_after: datetime | str | None = None,
        sent_before: datetime | str | None = None,
        page_size: int = 100,
    ) -> AsyncGenerator[TwilioPage, None]:
        """Twilio's message list (newest first), one page per step; each page is one bounded request.

        A page is requested only when the caller asks for it, so the caller decides how many to read (Twilio's
        list may name next pages without end); close the iterator (contextlib.aclosing) when stopping early.
        """
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
        while True:
            url = page.next_page_url
            yield TwilioPage([TwilioMessage.of(inst) for inst in page], more=bool(url))
            if not url:
                return
            page = await self._call(functools.partial(messages.get_page_async, url))
