"""A Twilio Messages API simulator for development and tests: `sms-gateway twilio-simulator`.

It speaks enough of Twilio's REST API that the real `twilio` package works against it unchanged
(`client.api.base_url = "http://127.0.0.1:PORT"`), moves each outbound message through Twilio's statuses
posting signed status callbacks, injects inbound messages as signed webhooks, and misbehaves on request.

Twilio REST API (Basic auth with TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN, else 401 / 20003; a path account sid
that is not the authenticated one answers 404 / 20404):
    POST   /2010-04-01/Accounts/{AccountSid}/Messages.json          create (201)
    GET    /2010-04-01/Accounts/{AccountSid}/Messages.json          list, newest first, paged
    GET    /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json    fetch
    POST   /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json    update: Body="" redacts, Status=canceled
    DELETE /2010-04-01/Accounts/{AccountSid}/Messages/{Sid}.json    delete (204)
List filters: To, From, DateSent, DateSent<, DateSent> (YYYY-MM-DD or an ISO 8601 time as twilio-python
sends; "<" and ">" are inclusive, as Twilio documents them); a message not yet sent is dated by its creation.
PageSize (default 50, at most 1000), Page, PageToken ("PA<sid>" continues after that message, "PB<sid>" goes
back before it, both stable while new messages arrive).

Control API (no auth: a dev tool that only listens on loopback):
    GET  /healthz
    GET  /_sim/messages    every message created or injected, oldest first, with create params and status
                           history; query: direction (inbound | outbound-api), to, from, sid
    GET  /_sim/creates     every create request with its params and how it was answered
    GET  /_sim/callbacks   every webhook attempt (status callbacks and inbound posts): kind, sid, url,
                           params, signature, idempotency_token, attempt, copy, status, error; query: sid, kind
    GET  /_sim/stats       counters
    GET  /_sim/rules       the rules in force (burst counters show what is left)
    PUT  /_sim/rules       replace the rules (JSON body; 400 with {"error": ...} when invalid)
    PATCH /_sim/rules      merge top-level keys into the rules in force
    POST /_sim/inbound     JSON {from, to?, body?, media?: [{url, content_type}], url?, deliver?: true}:
                           stores an inbound message and, unless deliver is false, posts Twilio's signed
                           inbound webhook to `url` or SMS_SIMULATOR_INBOUND_URL or
                           SMS_PUBLIC_BASE_URL + /twilio/inbound; answers {sid, status, attempts, url, error}
                           where status is the HTTP status the receiver answered (null if none)
    POST /_sim/reset       forget all messages, logs and counters; restore the start-up rules

Rules (SMS_SIMULATOR_RULES: a JSON object or a path to a JSON file), in short; see devstack.simulator_rules:
    {"seed": 7, "latency_ms": 0, "rate_429": 0.0, "rate_500": 0.0, "burst_429": 0, "burst_500": 0,
     "create_errors": {"+15005550001": 21211, "+15005550004": 21610, "+15005550009": 21614,
                       "+15005550003": 21408},
     "outcomes": {"+15005550010": "undelivered", "+15005550011": {"status": "failed", "error_code": 30008}},
     "lifecycle_ms": {"accepted": 10, "queued": 20, "sending": 30, "sent": 50},
     "callbacks": {"order": "in_order" | "reverse" | "shuffle", "copies": 1, "max_concurrency": 16,
                   "retry_backoff_ms": 50},
     "default_status_callback": null, "messaging_service_from": "+15005550006"}

Webhooks carry X-Twilio-Signature (over the URL without its #fragment) and an I-Twilio-Idempotency-Token
that retries and copies share. A URL fragment such as `#rc=3&rp=5xx` sets Twilio's connection overrides
(ct, rt, tt in ms; rc retries 0-5; rp 4xx, 5xx, ct, rt or all); by default one retry, on connect failure only.
Without TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN the simulator uses DEFAULT_ACCOUNT_SID / DEFAULT_AUTH_TOKEN.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
import random
import signal
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDictProxy

from devstack.simulator_rules import Outcome, Rules, RulesError, load_rules, parse_rules
from devstack.simulator_shapes import (
    API_VERSION,
    Message,
    error_body,
    new_sid,
    now,
    num_segments,
    raw_dlr_done_date,
    rfc2822,
)
from devstack.simulator_webhooks import WebhookPoster, new_idempotency_token
from server.config import Config, split_addr

log = logging.getLogger("devstack.twilio_simulator")

DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
DEFAULT_AUTH_TOKEN = "simulator-auth-token"
DEFAULT_NUMBER = "+15005550006"
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 50
MAX_MEDIA = 10
MAX_BODY = 1600
CANCELABLE = ("scheduled", "accepted", "queued")
TERMINAL = ("delivered", "undelivered", "failed", "canceled", "received")
LOOPBACK_NAMES = ("localhost",)

# Twilio reports where a number is registered; the simulator fakes it per country calling code.
_GEO: dict[str, dict[str, str]] = {
    "+1": {"City": "SAN FRANCISCO", "State": "CA", "Zip": "94105", "Country": "US"},
    "+44": {"City": "", "State": "", "Zip": "", "Country": "GB"},
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _twilio_error(code: int, message: str | None = None, status: int | None = None) -> web.Response:
    headers = {"WWW-Authenticate": 'Basic realm="Twilio API"'} if code == 20003 else None
    body = error_body(code, message, status)
    return web.json_response(body, status=body["status"], headers=headers)


def _geo(number: str) -> dict[str, str]:
    for prefix in sorted(_GEO, key=len, reverse=True):
        if number.startswith(prefix):
            return _GEO[prefix]
    return {}


def _parse_filter_time(raw: str) -> date | datetime:
    if len(raw) == 10:
        return date.fromisoformat(raw)
    moment = datetime.fromisoformat(raw)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class TwilioSimulator:
    """The simulator's state and its aiohttp application; usable in-process via `start`/`stop`."""

    def __init__(self, cfg: Config, rules: Rules | None = None, shutdown_grace: float = 2.0) -> None:
        self.account_sid = cfg.twilio_account_sid or DEFAULT_ACCOUNT_SID
        self._auth_token = cfg.twilio_auth_token or DEFAULT_AUTH_TOKEN
        self.inbound_url = cfg.simulator_inbound_url or cfg.public_base_url.rstrip("/") + "/twilio/inbound"
        self.our_number = cfg.twilio_from_number or DEFAULT_NUMBER
        self.messaging_service_sid = cfg.twilio_messaging_service_sid or None
        self._initial_rules = rules if rules is not None else load_rules(cfg.simulator_rules)
        self._shutdown_grace = shutdown_grace
        self._poster = WebhookPoster(self._auth_token, self._record_attempt)
        self._lifecycles: dict[str, asyncio.Task[None]] = {}
        self._deliveries: set[asyncio.Task[None]] = set()
        self._callback_tail: dict[str, asyncio.Task[None]] = {}
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        self._clear()
        self._set_rules(self._initial_rules)
        self.app = self._build_app()

    # ----- state -----

    def _clear(self) -> None:
        self._messages: dict[str, Message] = {}
        self._seq_of: dict[str, int] = {}
        self._next_seq = 0
        self._creates: list[dict[str, Any]] = []
        self._attempts: list[dict[str, Any]] = []
        self._stats: Counter[str] = Counter()
        self._errors_by_code: Counter[int] = Counter()

    def _set_rules(self, rules: Rules) -> None:
        self._rules = rules
        self._random = random.Random(rules.seed)
        # A new semaphore applies the new bound to new posts; posts in flight finish under the old one.
        self._semaphore = asyncio.Semaphore(rules.callbacks.max_concurrency)

    @property
    def rules(self) -> Rules:
        """The rules in force."""
        return self._rules

    def replace_rules(self, rules: Rules) -> None:
        """Puts `rules` in force (random choices restart from its seed)."""
        self._set_rules(rules)

    def _record_attempt(self, attempt: dict[str, Any]) -> None:
        self._attempts.append(attempt)
        self._stats[f"{attempt['kind']}_attempts"] += 1
        if attempt["status"] is not None and 200 <= attempt["status"] < 300:
            self._stats[f"{attempt['kind']}_attempts_ok"] += 1

    def _store(self, message: Message) -> None:
        self._messages[message.sid] = message
        self._seq_of[message.sid] = message.seq

    def _new_seq(self) -> int:
        self._next_seq += 1
        return self._next_seq

    def _spawn_delivery(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)
        return task

    # ----- app -----

    def _build_app(self) -> web.Application:
        app = web.Application()
        app[SIMULATOR_KEY] = self
        base = "/2010-04-01/Accounts/{account}"
        app.router.add_get("/healthz", self._healthz)
        app.router.add_post(base + "/Messages.json", self._rest(self._create))
        app.router.add_get(base + "/Messages.json", self._rest(self._list))
        app.router.add_get(base + "/Messages/{sid}.json", self._rest(self._fetch))
        app.router.add_post(base + "/Messages/{sid}.json", self._rest(self._update))
        app.router.add_delete(base + "/Messages/{sid}.json", self._rest(self._delete))
        app.router.add_get("/_sim/messages", self._sim_messages)
        app.router.add_get("/_sim/creates", self._sim_creates)
        app.router.add_get("/_sim/callbacks", self._sim_callbacks)
        app.router.add_get("/_sim/stats", self._sim_stats)
        app.router.add_get("/_sim/rules", self._sim_get_rules)
        app.router.add_put("/_sim/rules", self._sim_put_rules)
        app.router.add_patch("/_sim/rules", self._sim_patch_rules)
        app.router.add_post("/_sim/inbound", self._sim_inbound)
        app.router.add_post("/_sim/reset", self._sim_reset)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, _: web.Application) -> None:
        await self._poster.open()

    async def _on_shutdown(self, _: web.Application) -> None:
        await self.drain(self._shutdown_grace)

    async def drain(self, grace: float) -> None:
        """Stops lifecycles, lets posts in flight finish within `grace` seconds, cancels the rest."""
        for task in list(self._lifecycles.values()):
            task.cancel()
        await asyncio.gather(*self._lifecycles.values(), return_exceptions=True)
        self._lifecycles.clear()
        pending = set(self._deliveries)
        if pending:
            _, still = await asyncio.wait(pending, timeout=grace)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
        self._callback_tail.clear()
        await self._poster.close()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serves on host:port (0 picks a free port); returns the base URL."""
        _require_loopback(host)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = self._runner.addresses[0][1]
        netloc = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{netloc}:{bound}"
        return self.base_url

    async def stop(self) -> None:
        """Stops serving and drains pending webhooks."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ----- REST plumbing -----

    def _rest(self, handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            self._stats["rest_requests"] += 1
            latency = self._rules.latency_ms
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

    def _check_auth(self, request: web.Request) -> web.Response | None:
        login, password = _basic_credentials(request.headers.get("Authorization", ""))
        if not (
            hmac.compare_digest(login.encode(), self.account_sid.encode())
            and hmac.compare_digest(password.encode(), self._auth_token.encode())
        ):
            self._stats["auth_failures"] += 1
            return _twilio_error(20003, "Authenticate")
        if request.match_info["account"] != self.account_sid:
            return _twilio_error(20404, f"The requested resource {request.path} was not found")
        return None

    def _message_or_404(self, request: web.Request) -> Message | web.Response:
        message = self._messages.get(request.match_info["sid"])
        if message is None:
            return _twilio_error(20404, f"The requested resource {request.path} was not found")
        return message

    # ----- create -----

    async def _create(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        params = _form_params(form)
        self._stats["creates_received"] += 1
        rejected = self._misbehave() or self._validate(form)
        media_urls = [str(v) for v in form.getall("MediaUrl", [])]
        record: dict[str, Any] = {"at": rfc2822(now()), "params": params}
        self._creates.append(record)
        if rejected is not None:
            code = int(rejected["code"])
            record.update(status=rejected["status"], code=code, sid=None)
            self._errors_by_code[code] += 1
            log.info("create to %s rejected: %s", form.get("To"), code)
            return web.json_response(rejected, status=int(rejected["status"]))
        to = str(form["To"])
        service = str(form.get("MessagingServiceSid", "")) or None
        from_ = str(form.get("From", "")) or None
        body = str(form.get("Body", ""))
        callback = str(form.get("StatusCallback", "")) or self._rules.default_status_callback
        message = Message(
            sid=new_sid("MM" if media_urls else "SM"),
            seq=self._new_seq(),
            account_sid=self.account_sid,
            direction="outbound-api",
            to=to,
            from_=from_,
            body=body,
            status="accepted" if service else "queued",
            media=[{"url": url, "content_type": ""} for url in media_urls],
            messaging_service_sid=service,
            status_callback=callback,
            params={**params, "_segments": num_segments(body)},
        )
        message.history.append({"status": message.status, "error_code": None, "at": rfc2822(now())})
        self._store(message)
        record.update(status=201, code=None, sid=message.sid)
        self._stats["creates_accepted"] += 1
        outcome = self._rules.outcome_for(to)
        task = asyncio.get_running_loop().create_task(self._lifecycle(message, outcome))
        self._lifecycles[message.sid] = task
        task.add_done_callback(self._forget_lifecycle(message.sid))
        log.info("created %s to %s (%s)", message.sid, to, message.status)
        return web.json_response(message.to_twilio(), status=201)

    def _forget_lifecycle(self, sid: str) -> Callable[[asyncio.Task[None]], None]:
        def forget(done: asyncio.Task[None]) -> None:
            if self._lifecycles.get(sid) is done:
                del self._lifecycles[sid]

        return forget

    def _misbehave(self) -> dict[str, Any] | None:
        rules = self._rules
        if rules.burst_429 > 0:
            self._rules = rules.with_bursts(rules.burst_429 - 1, rules.burst_500)
            return self._count_error(20429)
        if rules.burst_500 > 0:
            self._rules = rules.with_bursts(0, rules.burst_500 - 1)
            return self._count_error(20500)
        if rules.rate_429 and self._random.random() < rules.rate_429:
            return self._count_error(20429)
        if rules.rate_500 and self._random.random() < rules.rate_500:
            return self._count_error(20500)
        return None

    def _count_error(self, code: int) -> dict[str, Any]:
        self._stats["creates_429" if code == 20429 else "creates_500"] += 1
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
        code = self._rules.create_errors.get(to)
        if code is not None:
            return self._create_error(code)
        return None

    def _create_error(self, code: int, message: str | None = None) -> dict[str, Any]:
        self._stats["create_errors"] += 1
        return error_body(code, message)

    # ----- lifecycle and status callbacks -----

    async def _lifecycle(self, message: Message, outcome: Outcome) -> None:
        path = ["queued"] if message.status == "accepted" else []
        if outcome.status == "failed":
            path += ["sending", "failed"]
        else:
            path += ["sending", "sent", outcome.status]
        held: list[dict[str, str]] = []
        for status in path:
            await asyncio.sleep(self._rules.lifecycle_ms.get(message.status, 0) / 1000)
            if message.status in TERMINAL or message.sid not in self._messages:
                return
            if message.from_ is None:
                message.from_ = self._rules.messaging_service_from
            final = status == path[-1]
            message.set_status(status, outcome.error_code if final and outcome.error_code else None)
            params = self._callback_params(message)
            if self._rules.callbacks.order == "in_order":
                self._queue_callbacks(message, [params])
            else:
                held.append(params)
        if held:
            if self._rules.callbacks.order == "reverse":
                held.reverse()
            else:
                self._random.shuffle(held)
            self._queue_callbacks(message, held)

    def _callback_params(self, message: Message) -> dict[str, str]:
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "MessageSid": message.sid,
            "SmsSid": message.sid,
            "MessageStatus": message.status,
            "SmsStatus": message.status,
            "To": message.to,
        }
        if message.from_:
            params["From"] = message.from_
        if message.messaging_service_sid:
            params["MessagingServiceSid"] = message.messaging_service_sid
        if message.status in ("failed", "undelivered") and message.error_code is not None:
            params["ErrorCode"] = str(message.error_code)
        if message.status in ("delivered", "undelivered"):
            params["RawDlrDoneDate"] = raw_dlr_done_date(message.date_updated)
        return params

    def _queue_callbacks(self, message: Message, batch: list[dict[str, str]]) -> None:
        url = message.status_callback
        if not url:
            return
        copies = self._rules.callbacks.copies
        backoff = self._rules.callbacks.retry_backoff_ms
        semaphore = self._semaphore
        previous = self._callback_tail.get(message.sid)

        async def post_all() -> None:
            # One message's callbacks go out one after another, so a chosen order is the order seen.
            if previous is not None:
                await asyncio.wait([previous])
            for params in batch:
                token = new_idempotency_token()
                for copy in range(1, copies + 1):
                    result = await self._poster.deliver(
                        "status", message.sid, url, params, token, semaphore, backoff, copy
                    )
                    ok = result.status is not None and 200 <= result.status < 300
                    self._stats["callbacks_delivered" if ok else "callbacks_failed"] += 1

        task = self._spawn_delivery(post_all())
        self._callback_tail[message.sid] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._callback_tail.get(message.sid) is done:
                del self._callback_tail[message.sid]

        task.add_done_callback(forget)

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
            return _twilio_error(30400)
        if has_body:
            found.body = ""
            found.date_updated = now()
        elif status != "canceled":
            return _twilio_error(30400)
        elif found.status not in CANCELABLE:
            return _twilio_error(30409)
        else:
            task = self._lifecycles.pop(found.sid, None)
            if task is not None:
                task.cancel()
            found.set_status("canceled")
            self._queue_callbacks(found, [self._callback_params(found)])
        return web.json_response(found.to_twilio())

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        found = self._message_or_404(request)
        if isinstance(found, web.Response):
            return found
        task = self._lifecycles.pop(found.sid, None)
        if task is not None:
            task.cancel()
        del self._messages[found.sid]
        return web.Response(status=204)

    async def _list(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        try:
            page_size = int(query.get("PageSize", DEFAULT_PAGE_SIZE))
            page = int(query.get("Page", 0))
            filters = {k: _parse_filter_time(query[k]) for k in ("DateSent", "DateSent<", "DateSent>") if k in query}
        except ValueError:
            return _twilio_error(20001, "Invalid PageSize, Page or DateSent")
        if page_size < 1 or page < 0:
            return _twilio_error(20001, "PageSize and Page must be positive")
        page_size = min(page_size, MAX_PAGE_SIZE)
        to, from_ = query.get("To"), query.get("From")
        selected = [
            m
            for m in sorted(self._messages.values(), key=lambda m: m.seq, reverse=True)
            if (to is None or m.to == to) and (from_ is None or m.from_ == from_) and _dated(m, filters)
        ]
        token = query.get("PageToken")
        if token:
            seq = self._seq_of.get(token[2:])
            if token[:2] not in ("PA", "PB") or seq is None:
                return _twilio_error(20001, "Invalid PageToken")
            if token.startswith("PA"):
                rest = [m for m in selected if m.seq < seq]
                items, more = rest[:page_size], len(rest) > page_size
            else:
                newer = [m for m in selected if m.seq > seq]
                items, more = newer[-page_size:], True
        else:
            rest = selected[page * page_size :]
            items, more = rest[:page_size], len(rest) > page_size
        path = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages.json"
        kept = [(k, query[k]) for k in ("To", "From", "DateSent", "DateSent<", "DateSent>") if k in query]

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
            "next_page_uri": uri(page + 1, "PA" + items[-1].sid) if more and items else None,
            "previous_page_uri": uri(page - 1, "PB" + items[0].sid) if page > 0 and items else None,
        }
        return web.json_response(body)

    # ----- control API -----

    async def _healthz(self, _: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def _sim_messages(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        keys = {"direction": "direction", "to": "to", "from": "from", "sid": "sid"}
        out = []
        for message in sorted(self._messages.values(), key=lambda m: m.seq):
            data = message.to_sim()
            if all(q[k] == data[field] for k, field in keys.items() if k in q):
                out.append(data)
        return web.json_response({"messages": out})

    async def _sim_creates(self, _: web.Request) -> web.StreamResponse:
        return web.json_response({"creates": self._creates})

    async def _sim_callbacks(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        out = [a for a in self._attempts if all(q[k] == a[k] for k in ("sid", "kind") if k in q)]
        return web.json_response({"callbacks": out})

    async def _sim_stats(self, _: web.Request) -> web.StreamResponse:
        return web.json_response(self.stats())

    def stats(self) -> dict[str, Any]:
        """Counters: REST calls, creates by outcome, webhook deliveries and attempts."""
        names = (
            "rest_requests",
            "auth_failures",
            "creates_received",
            "creates_accepted",
            "creates_429",
            "creates_500",
            "create_errors",
            "callbacks_delivered",
            "callbacks_failed",
            "status_attempts",
            "status_attempts_ok",
            "inbound_delivered",
            "inbound_failed",
            "inbound_stored_only",
            "inbound_attempts",
            "inbound_attempts_ok",
        )
        data: dict[str, Any] = {name: self._stats[name] for name in names}
        data["errors_by_code"] = {str(k): v for k, v in sorted(self._errors_by_code.items())}
        data["messages"] = len(self._messages)
        data["pending_callbacks"] = len(self._deliveries)
        return data

    async def _sim_get_rules(self, _: web.Request) -> web.StreamResponse:
        return web.json_response(self._rules.to_json())

    async def _read_rules(self, request: web.Request, merge: bool) -> Rules | web.Response:
        try:
            data = await request.json()
            if merge:
                if not isinstance(data, dict):
                    raise RulesError("rules must be a JSON object")
                data = {**self._rules.to_json(), **data}
            return parse_rules(data)
        except (json.JSONDecodeError, RulesError) as exc:
            return web.json_response({"error": str(exc)}, status=400)

    async def _sim_put_rules(self, request: web.Request) -> web.StreamResponse:
        rules = await self._read_rules(request, merge=False)
        if isinstance(rules, web.Response):
            return rules
        self.replace_rules(rules)
        return web.json_response(rules.to_json())

    async def _sim_patch_rules(self, request: web.Request) -> web.StreamResponse:
        rules = await self._read_rules(request, merge=True)
        if isinstance(rules, web.Response):
            return rules
        self.replace_rules(rules)
        return web.json_response(rules.to_json())

    async def _sim_reset(self, _: web.Request) -> web.StreamResponse:
        for task in [*self._lifecycles.values(), *self._deliveries]:
            task.cancel()
        await asyncio.gather(*self._lifecycles.values(), *self._deliveries, return_exceptions=True)
        self._lifecycles.clear()
        self._callback_tail.clear()
        self._clear()
        self._set_rules(self._initial_rules)
        return web.json_response({"ok": True})

    async def _sim_inbound(self, request: web.Request) -> web.StreamResponse:
        try:
            data = await request.json()
            message, url, deliver = self._inbound_message(data)
        except (json.JSONDecodeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self._store(message)
        params = self._inbound_params(message)
        if not deliver:
            self._stats["inbound_stored_only"] += 1
            return web.json_response({"sid": message.sid, "status": None, "attempts": 0, "url": url, "error": None})
        result = await self.deliver_inbound(message.sid, url, params)
        ok = result["status"] is not None and 200 <= result["status"] < 300
        self._stats["inbound_delivered" if ok else "inbound_failed"] += 1
        return web.json_response(result)

    async def deliver_inbound(self, sid: str, url: str, params: Mapping[str, str]) -> dict[str, Any]:
        """Posts one inbound webhook (with retries per the URL's overrides); returns the control API answer."""
        result = await self._poster.deliver(
            "inbound",
            sid,
            url,
            params,
            new_idempotency_token(),
            self._semaphore,
            self._rules.callbacks.retry_backoff_ms,
        )
        return {
            "sid": sid,
            "status": result.status,
            "attempts": result.attempts,
            "url": url,
            "error": result.error,
            "response": result.body,
        }

    def _inbound_message(self, data: Any) -> tuple[Message, str, bool]:
        if not isinstance(data, dict):
            raise ValueError("body must be a JSON object")
        from_ = data.get("from")
        to = data.get("to") or self.our_number
        body = data.get("body", "")
        media = data.get("media", [])
        url = data.get("url") or self.inbound_url
        deliver = data.get("deliver", True)
        if not isinstance(from_, str) or not from_:
            raise ValueError("from is required")
        if not isinstance(to, str) or not isinstance(body, str) or not isinstance(url, str):
            raise ValueError("to, body and url must be strings")
        if not isinstance(deliver, bool):
            raise ValueError("deliver must be true or false")
        if (
            not isinstance(media, list)
            or len(media) > MAX_MEDIA
            or not all(isinstance(m, dict) and isinstance(m.get("url"), str) for m in media)
        ):
            raise ValueError(f"media must be a list of at most {MAX_MEDIA} objects with a url")
        message = Message(
            sid=new_sid("MM" if media else "SM"),
            seq=self._new_seq(),
            account_sid=self.account_sid,
            direction="inbound",
            to=to,
            from_=from_,
            body=body,
            status="receiving",
            media=[{"url": m["url"], "content_type": str(m.get("content_type") or "image/jpeg")} for m in media],
            messaging_service_sid=self.messaging_service_sid,
            params={"_segments": num_segments(body)},
        )
        message.set_status("received")
        return message, url, deliver

    def _inbound_params(self, message: Message) -> dict[str, str]:
        params = {
            "ToCountry": "",
            "ToState": "",
            "ToCity": "",
            "ToZip": "",
            "FromCountry": "",
            "FromState": "",
            "FromCity": "",
            "FromZip": "",
        }
        for side, number in (("To", message.to), ("From", message.from_ or "")):
            for key, value in _geo(number).items():
                params[side + key] = value
        params = {k: v for k, v in params.items() if v}
        params.update(
            MessageSid=message.sid,
            SmsSid=message.sid,
            SmsMessageSid=message.sid,
            AccountSid=self.account_sid,
            From=message.from_ or "",
            To=message.to,
            Body=message.body,
            NumMedia=str(len(message.media)),
            NumSegments=str(message.segments),
            SmsStatus="received",
            ApiVersion=API_VERSION,
        )
        if message.messaging_service_sid:
            params["MessagingServiceSid"] = message.messaging_service_sid
        for i, item in enumerate(message.media):
            params[f"MediaUrl{i}"] = item["url"]
            params[f"MediaContentType{i}"] = item["content_type"]
        return params


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


def _require_loopback(host: str) -> None:
    if host in LOOPBACK_NAMES:
        return
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the Twilio simulator only listens on loopback addresses, not {host!r}")


SIMULATOR_KEY = web.AppKey("simulator", TwilioSimulator)


def make_app(cfg: Config, rules: Rules | None = None) -> web.Application:
    """The simulator's aiohttp application (for a test server); `app[SIMULATOR_KEY]` is its state."""
    return TwilioSimulator(cfg, rules).app


async def _serve(cfg: Config, rules: Rules) -> None:
    host, port = split_addr(cfg.simulator_addr, "SMS_SIMULATOR_ADDR")
    simulator = TwilioSimulator(cfg, rules)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    url = await simulator.start(host, port)
    log.info(
        "Twilio simulator on %s (account %s); inbound webhooks go to %s",
        url,
        simulator.account_sid,
        simulator.inbound_url,
    )
    try:
        await stop.wait()
    finally:
        log.info("Twilio simulator stopping")
        await simulator.stop()


def run(cfg: Config) -> int:
    """Runs the simulator until SIGTERM/SIGINT; returns the exit code."""
    try:
        _require_loopback(split_addr(cfg.simulator_addr, "SMS_SIMULATOR_ADDR")[0])
        rules = load_rules(cfg.simulator_rules)
    except (ValueError, RulesError) as exc:
        log.error("twilio-simulator: %s", exc)
        return 2
    asyncio.run(_serve(cfg, rules))
    return 0
