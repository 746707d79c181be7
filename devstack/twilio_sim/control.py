"""The simulator's control API: what happened, the rules in force, inbound injection, reset.

No auth: a dev tool that only listens on loopback.
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
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from devstack.twilio_sim.inbound import parse_injection, webhook_params
from devstack.twilio_sim.lifecycle import Lifecycles
from devstack.twilio_sim.rules import Rules, RulesError, parse_rules
from devstack.twilio_sim.state import AccountState
from devstack.twilio_sim.webhooks import WebhookPoster, new_idempotency_token

MESSAGE_FILTERS = ("direction", "to", "from", "sid")
CALLBACK_FILTERS = ("sid", "kind")


class ControlApi:
    """Inspection and steering of the simulated account, for developers and tests."""

    def __init__(self, state: AccountState, lifecycles: Lifecycles, poster: WebhookPoster, inbound_url: str) -> None:
        self._state = state
        self._lifecycles = lifecycles
        self._poster = poster
        self.inbound_url = inbound_url

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Serves /healthz and /_sim/*."""
        router.add_get("/healthz", self._healthz)
        router.add_get("/_sim/messages", self._messages)
        router.add_get("/_sim/creates", self._creates)
        router.add_get("/_sim/callbacks", self._callbacks)
        router.add_get("/_sim/stats", self._stats)
        router.add_get("/_sim/rules", self._get_rules)
        router.add_put("/_sim/rules", self._put_rules)
        router.add_patch("/_sim/rules", self._patch_rules)
        router.add_post("/_sim/inbound", self._inbound)
        router.add_post("/_sim/reset", self._reset)

    def stats(self) -> dict[str, Any]:
        """Counters: REST calls, creates by outcome, webhook deliveries and attempts."""
        return self._state.stats(self._lifecycles.pending_callbacks)

    async def deliver_inbound(self, sid: str, url: str, params: Mapping[str, str]) -> dict[str, Any]:
        """Posts one inbound webhook (with retries per the URL's overrides); returns the control API answer."""
        result = await self._poster.deliver(
            "inbound",
            sid,
            url,
            params,
            new_idempotency_token(),
            self._state.semaphore,
            self._state.rules.callbacks.retry_backoff_ms,
        )
        return {
            "sid": sid,
            "status": result.status,
            "attempts": result.attempts,
            "url": url,
            "error": result.error,
            "response": result.body,
        }

    async def _healthz(self, _: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        out = []
        for message in self._state.in_order():
            data = message.to_sim()
            if all(q[k] == data[k] for k in MESSAGE_FILTERS if k in q):
                out.append(data)
        return web.json_response({"messages": out})

    async def _creates(self, _: web.Request) -> web.StreamResponse:
        return web.json_response({"creates": self._state.creates})

    async def _callbacks(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        out = [a for a in self._state.attempts if all(q[k] == a[k] for k in CALLBACK_FILTERS if k in q)]
        return web.json_response({"callbacks": out})

    async def _stats(self, _: web.Request) -> web.StreamResponse:
        return web.json_response(self.stats())

    async def _get_rules(self, _: web.Request) -> web.StreamResponse:
        return web.json_response(self._state.rules.to_json())

    async def _put_rules(self, request: web.Request) -> web.StreamResponse:
        return await self._set_rules(request, merge=False)

    async def _patch_rules(self, request: web.Request) -> web.StreamResponse:
        return await self._set_rules(request, merge=True)

    async def _set_rules(self, request: web.Request, merge: bool) -> web.StreamResponse:
        try:
            data = await request.json()
            if merge:
                if not isinstance(data, dict):
                    raise RulesError("rules must be a JSON object")
                data = {**self._state.rules.to_json(), **data}
            rules: Rules = parse_rules(data)
        except (json.JSONDecodeError, RulesError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self._state.set_rules(rules)
        return web.json_response(rules.to_json())

    async def _reset(self, _: web.Request) -> web.StreamResponse:
        await self._lifecycles.stop_all()
        self._state.clear()
        self._state.set_rules(self._state.initial_rules)
        return web.json_response({"ok": True})

    async def _inbound(self, request: web.Request) -> web.StreamResponse:
        try:
            injection = parse_injection(await request.json(), self._state, self.inbound_url)
        except (json.JSONDecodeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        message = injection.message
        self._state.store(message)
        if not injection.deliver:
            self._state.counters["inbound_stored_only"] += 1
            body = {"sid": message.sid, "status": None, "attempts": 0, "url": injection.url, "error": None}
            return web.json_response(body)
        result = await self.deliver_inbound(message.sid, injection.url, webhook_params(message))
        ok = result["status"] is not None and 200 <= result["status"] < 300
        self._state.counters["inbound_delivered" if ok else "inbound_failed"] += 1
        return web.json_response(result)
