"""The simulator as an aiohttp application: in-process start/stop, and `run` for `sms-gateway twilio-simulator`."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from devstack.twilio_sim.control import ControlApi
from devstack.twilio_sim.lifecycle import Lifecycles
from devstack.twilio_sim.rest import MessagesApi
from devstack.twilio_sim.rules import Rules, RulesError, load_rules
from devstack.twilio_sim.state import AccountState, Identity
from devstack.twilio_sim.webhooks import WebhookPoster
from server.config import Config, split_addr
from server.signals import stop_event
from server.webhook_routes import INBOUND_PATH

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost",)


class TwilioSimulator:
    """The simulated account and its aiohttp application; usable in-process via `start`/`stop`."""

    def __init__(self, cfg: Config, rules: Rules | None = None, shutdown_grace: float = 2.0) -> None:
        identity = Identity.from_config(cfg)
        self.state = AccountState(identity, rules if rules is not None else load_rules(cfg.simulator_rules))
        self._poster = WebhookPoster(identity.auth_token, self.state.record_attempt)
        self.lifecycles = Lifecycles(self.state, self._poster)
        inbound_url = cfg.simulator_inbound_url or cfg.public_base_url.rstrip("/") + INBOUND_PATH
        self.control = ControlApi(self.state, self.lifecycles, self._poster, inbound_url)
        self._shutdown_grace = shutdown_grace
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        self.app = self._build_app()

    @property
    def account_sid(self) -> str:
        """The simulated account's sid."""
        return self.state.identity.account_sid

    @property
    def inbound_url(self) -> str:
        """Where injected inbound messages are posted unless the request names a URL."""
        return self.control.inbound_url

    @property
    def rules(self) -> Rules:
        """The rules in force."""
        return self.state.rules

    def replace_rules(self, rules: Rules) -> None:
        """Puts `rules` in force (random choices restart from its seed)."""
        self.state.set_rules(rules)

    def stats(self) -> dict[str, Any]:
        """Counters: REST calls, creates by outcome, webhook deliveries and attempts."""
        return self.control.stats()

    async def deliver_inbound(self, sid: str, url: str, params: Mapping[str, str]) -> dict[str, Any]:
        """Posts one inbound webhook (with retries per the URL's overrides); returns the control API answer."""
        return await self.control.deliver_inbound(sid, url, params)

    def _build_app(self) -> web.Application:
        app = web.Application()
        app[SIMULATOR_KEY] = self
        MessagesApi(self.state, self.lifecycles).add_routes(app.router)
        self.control.add_routes(app.router)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _on_startup(self, _: web.Application) -> None:
        await self._poster.open()

    async def _on_shutdown(self, _: web.Application) -> None:
        await self.drain(self._shutdown_grace)

    async def drain(self, grace: float) -> None:
        """Stops lifecycles, lets posts in flight finish within `grace` seconds, cancels the rest."""
        await self.lifecycles.stop_all(grace)
        await self._poster.close()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serves on host:port (0 picks a free port); returns the base URL."""
        require_loopback(host)
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


SIMULATOR_KEY = web.AppKey("simulator", TwilioSimulator)


def make_app(cfg: Config, rules: Rules | None = None) -> web.Application:
    """The simulator's aiohttp application (for a test server); `app[SIMULATOR_KEY]` is its state."""
    return TwilioSimulator(cfg, rules).app


def require_loopback(host: str) -> None:
    """Raises ValueError unless `host` is a loopback address: the control API has no auth."""
    if host in LOOPBACK_NAMES:
        return
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"the Twilio simulator only listens on loopback addresses, not {host!r}")


async def _serve(cfg: Config, rules: Rules) -> None:
    host, port = split_addr(cfg.simulator_addr, "SMS_SIMULATOR_ADDR")
    simulator = TwilioSimulator(cfg, rules)
    stop = stop_event()
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
        require_loopback(split_addr(cfg.simulator_addr, "SMS_SIMULATOR_ADDR")[0])
        rules = load_rules(cfg.simulator_rules)
    except (ValueError, RulesError) as exc:
        log.error("twilio-simulator: %s", exc)
        return 2
    asyncio.run(_serve(cfg, rules))
    return 0
