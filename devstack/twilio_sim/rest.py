"""Twilio's Messages REST API, enough of it that the real `twilio` package works against the simulator unchanged.

Basic auth with the account sid and auth token, else 401 / 20003; a path account sid that is not the
authenticated one answers 404 / 20404:
    POST   /2010-04-01/Accounts/{AccountSid}/Messages.json          create (201)
    GET    /2010-04-01/Accounts/{AccountSid}/Messages.json          list, newest first, paged
    GET    /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json    fetch
    POST   /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json    update: Body="" redacts, Status=canceled
    DELETE /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json    delete (204)
List filters: To, From, DateSent, DateSent<, DateSent> (YYYY-MM-DD or an ISO 8601 time as twilio-python
sends; "<" and ">" are inclusive, as Twilio documents them); a message not yet sent is dated by its creation.
PageSize (default 50, at most 1000), Page, PageToken ("PA<sid>" continues after that message, "PB<sid>" goes
back before it, both stable while new messages arrive).
List pages and fetches obey the rules `read_errors` (answer 401, 403, 429, 500 or 503) and `endless_list`
(every page names a next one).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDictProxy

from devstack.twilio_sim.lifecycle import Lifecycles
from devstack.twilio_sim.rules import READ_ERROR_CODES
from devstack.twilio_sim.shapes import (
    API_VERSION,
    MAX_MEDIA,
    Message,
    error_body,
    new_sid,
    now,
    num_segments,
    rfc2822,
)
from devstack.twilio_sim.state import AccountState

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50
MAX_BODY = 1600
CANCELABLE = ("scheduled", "accepted", "queued")
DATE_FILTERS = ("DateSent", "DateSent<", "DateSent>")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MessagesApi:
    """The Messages resource of the simulated account."""

    def __init__(self, state: AccountState, lifecycles: Lifecycles) -> None:
        self._state = state
        self._lifecycles = lifecycles

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Serves the resource under Twilio's paths."""
        base = f"/{API_VERSION}/Accounts/{{account}}"
        router.add_post(base + "/Messages.json", self._guarded(self._create))
        router.add_get(base + "/Messages.json", self._guarded(self._read(self._list)))
        router.add_get(base + "/Messages/{sid}.json", self._guarded(self._read(self._fetch)))
        router.add_post(base + "/Messages/{sid}.json", self._guarded(self._update))
        router.add_delete(base + "/Messages/{sid}.json", self._guarded(self._delete))

    # ----- plumbing -----

    def _guarded(self, handler: Handler) -> Handler:
        """`handler` behind the configured latency and Basic auth."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            self._state.counters["rest_requests"] += 1
            latency = self._state.rules.latency_ms
            if latency:
                # Read the body first: like Twilio, a request that arrived is processed even when the
                # client gives up (a worker killed or timed out mid-request) before the answer.
                await request.read()
                await asyncio.sleep(latency / 1000)
            denied = self._check_auth(request)
            if denied is not None:
                return denied
            return await handler(request)

        return wrapped

    def _read(self, handler: Handler) -> Handler:
        """`handler` (a list page or a fetch) under the read_errors rule."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            rule = self._state.rules.read_errors
            if rule.fails(self._state.next_read()):
                self._state.counters["read_errors"] += 1
                code, text = READ_ERROR_CODES[rule.status]
                return twilio_error(code, rule.message or text, rule.status)
            return await handler(request)

        return wrapped

    def _check_auth(self, request: web.Request) -> web.Response | None:
        identity = self._state.identity
        login, password = _basic_credentials(request.headers.get("Authorization", ""))
        if not (
            hmac.compare_digest(login.encode(), identity.account_sid.encode())
            and hmac.compare_digest(password.encode(), identity.auth_token.encode())
        ):
            self._state.counters["auth_failures"] += 1
            return twilio_error(20003, "Authenticate")
        if request.match_info["account"] != identity.account_sid:
            return twilio_error(20404, f"The requested resource {request.path} was not found")
        return None

    def _message_or_404(self, request: web.Request) -> Message | web.Response:
        message = self._state.messages.get(request.match_info["sid"])
        if message is None:
            return twilio_error(20404, f"The requested resource {request.path} was not found")
        return message

    # ----- create -----

    async def _create(self, request: web.Request) -> web.StreamResponse:
        state = self._state
        form = await request.post()
        params = _form_params(form)
        state.counters["creates_received"] += 1
        rejected = self._misbehave() or self._validate(form)
        media_urls = [str(v) for v in form.getall("MediaUrl", [])]
        record: dict[str, Any] = {"at": rfc2822(now()), "params": params}
        state.creates.append(record)
        if rejected is not None:
            code = int(rejected["code"])
            record.update(status=rejected["status"], code=code, sid=None)
            state.errors_by_code[code] += 1
            log.info("create to %s rejected: %s", form.get("To"), code)
            return web.json_response(rejected, status=int(rejected["status"]))
        to = str(form["To"])
        service = str(form.get("MessagingServiceSid", "")) or None
        body = str(form.get("Body", ""))
        message = Message(
            sid=new_sid("MM" if media_urls else "SM"),
            seq=state.new_seq(),
            account_sid=state.identity.account_sid,
            direction="outbound-api",
            to=to,
            from_=str(form.get("From", "")) or None,
            body=body,
            status="accepted" if service else "queued",
            media=[{"url": url, "content_type": ""} for url in media_urls],
            messaging_service_sid=service,
            status_callback=str(form.get("StatusCallback", "")) or state.rules.default_status_callback,
            params={**params, "_segments": num_segments(body)},
        )
        message.history.append({"status": message.status, "error_code": None, "at": rfc2822(now())})
        state.store(message)
        record.update(status=201, code=None, sid=message.sid)
        state.counters["creates_accepted"] += 1
        self._lifecycles.begin(message, state.rules.outcome_for(to))
        log.info("created %s to %s (%s)", message.sid, to, message.status)
        return web.json_response(message.to_twilio(), status=201)

    def _misbehave(self) -> dict[str, Any] | None:
        state = self._state
        rules = state.rules
        if rules.burst_429 > 0:
            state.rules = rules.with_bursts(rules.burst_429 - 1, rules.burst_500)
            return self._count_error(20429)
        if rules.burst_500 > 0:
            state.rules = rules.with_bursts(0, rules.burst_500 - 1)
            return self._count_error(20500)
        if rules.rate_429 and state.random.random() < rules.rate_429:
            return self._count_error(20429)
        if rules.rate_500 and state.random.random() < rules.rate_500:
            return self._count_error(20500)
        return None

    def _count_error(self, code: int) -> dict[str, Any]:
        self._state.counters["creates_429" if code == 20429 else "creates_500"] += 1
        return error_body(code)

    def _validate(self, form: MultiDictProxy[Any]) -> dict[str, Any] | None:
        to = str(form.get("To", "")).strip()
        if not to:
            return self._create_error(21604)
        if not (form.get("From") or form.get("MessagingServiceSid")):
            return self._create_error(21603)
        media = form.getall("MediaUrl", [])
        if not (form.get("Body") or media or form.get("ContentSid")):
            return self._create_error(21602)
        if len(media) > MAX_MEDIA:
            return self._create_error(21623)
        if len(str(form.get("Body", ""))) > MAX_BODY:
            return self._create_error(21617)
        digits = to.removeprefix("whatsapp:")
        if not (digits.startswith("+") and digits[1:].isdigit() and 8 <= len(digits) <= 16):
            return self._create_error(21211, f"The 'To' number {to} is not a valid phone number.")
        code = self._state.rules.create_errors.get(to)
        if code is not None:
            return self._create_error(code)
        return None

    def _create_error(self, code: int, message: str | None = None) -> dict[str, Any]:
        self._state.counters["create_errors"] += 1
        return error_body(code, message)

    # ----- fetch, update, delete, list -----

    async def _fetch(self, request: web.Request) -> web.StreamResponse:
        found = self._message_or_404(request)
        if isinstance(found, web.Response):
            return found
        return web.json_response(found.to_twilio())

    async def _update(self, request: web.Request) -> web.StreamResponse:
        found = self._message_or_404(request)
        if isinstance(found, web.Response):
            return found
        form = await request.post()
        has_body, status = "Body" in form, form.get("Status")
        if has_body == (status is not None) or (has_body and form["Body"] != ""):
            return twilio_error(30400)
        if has_body:
            found.body = ""
            found.date_updated = now()
        elif status != "canceled":
            return twilio_error(30400)
        elif found.status not in CANCELABLE:
            return twilio_error(30409)
        else:
            self._lifecycles.cancel(found.sid)
            found.set_status("canceled")
            self._lifecycles.announce(found)
        return web.json_response(found.to_twilio())

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        found = self._message_or_404(request)
        if isinstance(found, web.Response):
            return found
        self._lifecycles.cancel(found.sid)
        del self._state.messages[found.sid]
        return web.Response(status=204)

    async def _list(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        try:
            page_size = int(query.get("PageSize", DEFAULT_PAGE_SIZE))
            page = int(query.get("Page", 0))
            filters = {k: _parse_filter_time(query[k]) for k in DATE_FILTERS if k in query}
        except ValueError:
            return twilio_error(20001, "Invalid PageSize, Page or DateSent")
        if page_size < 1 or page < 0:
            return twilio_error(20001, "PageSize and Page must be positive")
        page_size = min(page_size, MAX_PAGE_SIZE)
        to, from_ = query.get("To"), query.get("From")
        selected = [
            m
            for m in self._state.in_order(newest_first=True)
            if (to is None or m.to == to) and (from_ is None or m.from_ == from_) and _dated(m, filters)
        ]
        token = query.get("PageToken")
        if token:
            seq = self._state.seq_of(token[2:])
            if token[:2] not in ("PA", "PB") or seq is None:
                return twilio_error(20001, "Invalid PageToken")
            if token.startswith("PA"):
                rest = [m for m in selected if m.seq < seq]
                items, more = rest[:page_size], len(rest) > page_size
            else:
                newer = [m for m in selected if m.seq > seq]
                items, more = newer[-page_size:], True
        else:
            rest = selected[page * page_size :]
            items, more = rest[:page_size], len(rest) > page_size
        path = f"/{API_VERSION}/Accounts/{self._state.identity.account_sid}/Messages.json"
        kept = [(k, query[k]) for k in ("To", "From", *DATE_FILTERS) if k in query]

        def uri(number: int, page_token: str | None = None) -> str:
            pairs = [*kept, ("PageSize", str(page_size)), ("Page", str(number))]
            if page_token:
                pairs.append(("PageToken", page_token))
            return f"{path}?{urlencode(pairs)}"

        start = page * page_size
        body = {
            "messages": [m.to_twilio() for m in items],
            "page": page,
            "page_size": page_size,
            "start": start,
            "end": start + max(len(items) - 1, 0),
            "uri": uri(page, token),
            "first_page_uri": uri(0),
            "next_page_uri": self._next_page_uri(uri, page, token, items, more),
            "previous_page_uri": uri(page - 1, "PB" + items[0].sid) if page > 0 and items else None,
        }
        return web.json_response(body)

    def _next_page_uri(
        self, uri: Callable[[int, str | None], str], page: int, token: str | None, items: list[Message], more: bool
    ) -> str | None:
        """The next page after `items`; with `endless_list` there always is one (empty past the last message)."""
        if items and (more or self._state.rules.endless_list):
            return uri(page + 1, "PA" + items[-1].sid)
        if self._state.rules.endless_list:
            return uri(page + 1, token)
        return None


def twilio_error(code: int, message: str | None = None, status: int | None = None) -> web.Response:
    """Twilio's error answer for `code` (with the Basic auth challenge for 20003)."""
    headers = {"WWW-Authenticate": 'Basic realm="Twilio API"'} if code == 20003 else None
    body = error_body(code, message, status)
    return web.json_response(body, status=body["status"], headers=headers)


def _basic_credentials(header: str) -> tuple[str, str]:
    # Decoded by hand: aiohttp deprecates BasicAuth, and a malformed header simply fails authentication.
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return "", ""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    login, _, password = decoded.partition(":")
    return login, password


def _form_params(form: MultiDictProxy[Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for key in form:
        values = [str(v) for v in form.getall(key)]
        params[key] = values if key == "MediaUrl" or len(values) > 1 else values[0]
    return params


def _parse_filter_time(raw: str) -> date | datetime:
    if len(raw) == 10:
        return date.fromisoformat(raw)
    moment = datetime.fromisoformat(raw)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _dated(message: Message, filters: Mapping[str, date | datetime]) -> bool:
    if not filters:
        return True
    moment = message.date_sent or message.date_created
    for key, value in filters.items():
        subject: date | datetime = moment if isinstance(value, datetime) else moment.date()
        if key == "DateSent" and moment.date() != (value.date() if isinstance(value, datetime) else value):
            return False
        if key == "DateSent<" and subject > value:
            return False
        if key == "DateSent>" and subject < value:
            return False
    return True
