"""The webhook bridge: Twilio's signed form posts in, SmsIngestService calls out, answered once stored."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from multidict import MultiDictProxy

from server.auth import check_secrets
from server.config import Config, ConfigError, split_addr
from server.limits import FORM_BYTES
from server.signals import on_stop_signals
from server.webhook_routes import INBOUND_PATH, STATUS_PATH
from webhook_bridge.connections import ConnectionGuard, GuardedSite, request_timing
from webhook_bridge.forms import FORM_CONTENT_TYPE, FormError, inbound_request, parse_form, status_request
from webhook_bridge.ingest_client import TOKEN_TTL_SECONDS, IngestClient, IngestError
from webhook_bridge.log_context import bind_trace_id
from webhook_bridge.metrics import BridgeMetrics, serve_metrics
from webhook_bridge.signature import SIGNATURE_HEADER, SignatureVerifier, Verdict

log = logging.getLogger("webhook_bridge")

MAX_BODY_BYTES = FORM_BYTES
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
# Twilio only retries a 5xx when the webhook URL carries connection overrides (#rc=..&rp=5xx); the header
# is for any other client, and for operators reading the answer.
RETRY_AFTER_SECONDS = "2"
# Twilio posts plain forms. The bodies are read undecoded (auto_decompress off: no work for a compressed body
# that will be refused anyway), so any other Content-Encoding is one the bridge cannot decode: 400.
IDENTITY_ENCODINGS = frozenset({"", "identity"})
LISTEN_BACKLOG = 1024
METRICS = web.AppKey("metrics", BridgeMetrics)


class Bridge:
    """The routes, with what they share: the ingest client, the signature check and the metrics."""

    def __init__(
        self, client: IngestClient, verifier: SignatureVerifier | None, metrics: BridgeMetrics, read_timeout: float
    ) -> None:
        self.client = client
        self.verifier = verifier
        self.metrics = metrics
        self.read_timeout = read_timeout

    async def inbound(self, request: web.Request) -> web.Response:
        """POST /twilio/inbound: store the message, then answer with empty TwiML (send no reply)."""

        async def store(form: MultiDictProxy[str]) -> str:
            resp = await self.client.record_inbound(inbound_request(form))
            return "duplicate" if resp.duplicate else "stored"

        return await self._handle(
            request, "inbound", store, lambda: web.Response(text=EMPTY_TWIML, content_type="text/xml")
        )

    async def status(self, request: web.Request) -> web.Response:
        """POST /twilio/status: record the status callback, then answer 200 with no body."""

        async def store(form: MultiDictProxy[str]) -> str:
            resp = await self.client.record_status(status_request(form))
            return "applied" if resp.applied else "not_applied"

        return await self._handle(request, "status", store, lambda: web.Response(status=200))

    async def healthz(self, _: web.Request) -> web.Response:
        """GET /healthz: 200 only while the gRPC server reports SERVING, so balancers skip a cut-off one."""
        if await self.client.serving():
            return web.Response(text="serving\n")
        return web.Response(status=503, text="grpc server not serving\n")

    async def metrics_page(self, _: web.Request) -> web.Response:
        """GET /metrics: Prometheus text exposition (prometheus_client's, process metrics included)."""
        body = self.metrics.render().encode()
        return web.Response(body=body, headers={"Content-Type": BridgeMetrics.CONTENT_TYPE})

    async def _handle(
        self,
        request: web.Request,
        route: str,
        store: Callable[[MultiDictProxy[str]], Awaitable[str]],
        answer: Callable[[], web.Response],
    ) -> web.Response:
        outcome, response = await self._process(request, route, store, answer)
        self.metrics.posts.inc(route, outcome)
        return response

    async def _process(
        self,
        request: web.Request,
        route: str,
        store: Callable[[MultiDictProxy[str]], Awaitable[str]],
        answer: Callable[[], web.Response],
    ) -> tuple[str, web.Response]:
        if any(e.strip().lower() not in IDENTITY_ENCODINGS for e in request.headers.getall("Content-Encoding", [])):
            return "bad_request", _plain(400, "unsupported Content-Encoding: send the form uncompressed")
        # Refuse an oversized body before reading it when the length is declared; read() enforces the same
        # limit (client_max_size) for chunked bodies.
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return "too_large", _too_large()
        try:
            async with asyncio.timeout(self.read_timeout):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return "too_large", _too_large()
        except TimeoutError:
            # A slow client: close the connection, it would only hold a slot (see connections.py).
            response = _plain(408, f"body not received within {self.read_timeout:g} s")
            response.force_close()
            return "timeout", response
        except RequestPayloadError:
            return "bad_request", _plain(400, "malformed body")
        except ConnectionResetError:
            # The client left mid-body: nobody reads this answer, but it keeps aiohttp from logging a 500.
            return "client_gone", _plain(400, "connection lost")
        if request.content_type != FORM_CONTENT_TYPE:
            return "bad_request", _plain(400, f"expected {FORM_CONTENT_TYPE}")
        try:
            form = parse_form(body)
        except FormError as exc:
            return "bad_request", _plain(400, str(exc))

        if self.verifier is not None:
            verdict = self.verifier.verify(request.raw_path, form, request.headers.get(SIGNATURE_HEADER))
            if verdict is not Verdict.VALID:
                self.metrics.signature_failures.inc(route, verdict.value)
                # Nothing from the body: an unsigned post is untrusted, and bodies are never logged.
                log.warning("refused %s post from %s: %s %s", route, request.remote, verdict.value, SIGNATURE_HEADER)
                return "forbidden", _plain(403, "invalid signature")

        try:
            outcome = await store(form)
        except FormError as exc:
            return "bad_request", _plain(400, str(exc))
        except IngestError as exc:
            return self._failed(route, form, exc)
        return outcome, answer()

    def _failed(self, route: str, form: MultiDictProxy[str], exc: IngestError) -> tuple[str, web.Response]:
        sid = form.get("MessageSid", "")
        if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
            log.warning("server refused %s %s as invalid: %s", route, sid, exc.details)
            return "bad_request", _plain(400, "invalid post")
        if exc.code == grpc.StatusCode.NOT_FOUND:
            # The sid may be one the worker has not written yet: a 503 gets the callback retried (with
            # connection overrides) instead of acknowledging something that was never stored.
            log.warning("%s callback for unknown sid %s; answering 503 so Twilio retries", route, sid)
            return "unknown_sid", _unavailable()
        log.error("could not store %s %s: %s %s", route, sid, exc.code.name, exc.details)
        return "unavailable", _unavailable()


class MalformedRequestLog(logging.Filter):
    """aiohttp logs every unparsable request (its own 400) as an error with a traceback: a flood any client can
    cause. Such a record becomes one warning line naming the client, without the traceback or the input."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            record.msg, record.args = "%s: %s (%d)", (record.getMessage(), type(exc).__name__, exc.code)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n")


def _too_large() -> web.Response:
    return _plain(413, f"body over {MAX_BODY_BYTES} bytes")


def _unavailable() -> web.Response:
    return web.Response(status=503, text="try again\n", headers={"Retry-After": RETRY_AFTER_SECONDS})


def build_app(cfg: Config, metrics: BridgeMetrics | None = None) -> web.Application:
    """The aiohttp application for `cfg`; its cleanup closes the gRPC channel."""
    metrics = metrics or BridgeMetrics()
    verifier = SignatureVerifier(cfg.twilio_auth_token, cfg.public_base_url) if cfg.webhook_verify else None
    # Short-lived tokens, never longer than the server accepts.
    ttl = min(TOKEN_TTL_SECONDS, cfg.jwt_max_ttl_seconds)
    client = IngestClient(cfg.grpc_target, cfg.ingest_secret, cfg.bridge_deadline_seconds, metrics, ttl)
    bridge = Bridge(client, verifier, metrics, cfg.bridge_read_timeout_seconds)
    # One byte over the limit is enough to tell "too large" from "exactly at the limit".
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[request_timing, bind_trace_id])
    app[METRICS] = metrics
    app.router.add_post(INBOUND_PATH, bridge.inbound)
    app.router.add_post(STATUS_PATH, bridge.status)
    app.router.add_get("/healthz", bridge.healthz)
    app.router.add_get("/metrics", bridge.metrics_page)

    async def connect(_: web.Application) -> None:
        client.connect()

    async def close(_: web.Application) -> None:
        await client.close()

    app.on_startup.append(connect)
    app.on_cleanup.append(close)
    return app


def make_runner(cfg: Config, app: web.Application) -> web.AppRunner:
    """The runner of a bridge app, with the bridge's HTTP options."""
    # In-flight posts end within the internal deadline; leave a margin for the answer itself.
    return web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=max(cfg.drain_seconds, cfg.bridge_deadline_seconds + 1.0),
        auto_decompress=False,
    )


def make_site(cfg: Config, runner: web.AppRunner, host: str, port: int) -> GuardedSite:
    """The listening site of a set-up runner: read timeouts and the connection cap of `cfg` applied."""
    guard = ConnectionGuard(cfg.bridge_max_connections, cfg.bridge_read_timeout_seconds, runner.app[METRICS])
    return GuardedSite(runner, host, port, guard, backlog=LISTEN_BACKLOG)


async def serve(cfg: Config, ready: Callable[[], None] | None = None) -> int:
    """Serves until SIGTERM/SIGINT, then stops accepting, finishes in-flight posts and returns 0."""
    host, port = split_addr(cfg.bridge_addr, "SMS_BRIDGE_ADDR")
    logging.getLogger("aiohttp.server").addFilter(MalformedRequestLog())
    # /metrics on the bridge's port stays; SMS_METRICS_ADDR serves the same registry where every process does.
    serve_metrics(cfg.metrics_addr)
    runner = make_runner(cfg, build_app(cfg))
    await runner.setup()
    stop = asyncio.Event()
    remove_handlers = on_stop_signals(lambda _sig: stop.set())
    try:
        await make_site(cfg, runner, host, port).start()
        log.info("webhook bridge listening on %s:%d, calling %s", host, port, cfg.grpc_target)
        if ready is not None:
            ready()
        await stop.wait()
        log.info("stopping: no new connections, finishing in-flight posts")
    finally:
        remove_handlers()
        await runner.cleanup()
    log.info("webhook bridge stopped")
    return 0


def run(cfg: Config) -> int:
    """Entry point of `sms-gateway bridge`."""
    cfg.require("SMS_INGEST_SECRET", *(("TWILIO_AUTH_TOKEN", "SMS_PUBLIC_BASE_URL") if cfg.webhook_verify else ()))
    check_secrets(SMS_INGEST_SECRET=cfg.ingest_secret)
    if cfg.bridge_deadline_seconds <= 0:
        raise ConfigError("SMS_BRIDGE_DEADLINE_SECONDS must be above 0: posts are answered only once stored")
    if cfg.bridge_read_timeout_seconds <= 0:
        raise ConfigError("SMS_BRIDGE_READ_TIMEOUT_SECONDS must be above 0: slow clients would hold connections")
    if cfg.jwt_secret:
        # It would let anyone who takes over the bridge mint admin tokens; the bridge needs only its ingest key.
        log.warning("SMS_JWT_SECRET is set but the bridge does not use it: remove it from the bridge's environment")
    if not cfg.webhook_verify:
        log.warning(
            "!!! SMS_WEBHOOK_VERIFY=false: X-Twilio-Signature is NOT checked; anyone who can reach this "
            "bridge can inject messages and statuses. Local use only. !!!"
        )
    return asyncio.run(serve(cfg))
