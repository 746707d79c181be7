"""The bridge's gRPC client of SmsIngestService: one channel, an `ingest` token, a deadline, quick retries."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sms.v1 import ingest_pb2, ingest_pb2_grpc, types_pb2

from server import log_context
from server.auth import Role, mint_token
from server.errors import error_reason
from server.reasons import Reason
from webhook_bridge.metrics import BridgeMetrics

log = logging.getLogger(__name__)

SERVICE_USER = "webhook-bridge"
# Health of the service the bridge needs, not just the process: the server reports it NOT_SERVING while
# MongoDB or Redis is unreachable and while draining.
INGEST_SERVICE = ingest_pb2.DESCRIPTOR.services_by_name["SmsIngestService"].full_name
# Short-lived: a token that leaks from the bridge is of use for minutes, and only on SmsIngestService.
TOKEN_TTL_SECONDS = 600
# Re-mint well before expiry so a token never expires between being attached and being checked.
TOKEN_REFRESH_MARGIN_SECONDS = 120
# Fast attempts on UNAVAILABLE before the last one, which waits for the channel to be ready.
UNAVAILABLE_BACKOFF = (0.05, 0.2)
UNAVAILABLE_WAIT_PAUSE = 0.2
# A status callback can overtake the worker's write of the sid: ask again after these pauses.
NOT_FOUND_BACKOFF = (0.25, 0.5)
# Concurrent callbacks for one message can exhaust the server's optimistic-update retries (ABORTED); the write
# is idempotent, so it is simply asked again.
CONFLICT_BACKOFF = (0.01, 0.05, 0.1)

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    # gRPC's default reconnect backoff grows to 120 s; a server that comes back must be reached at once,
    # or the bridge would keep answering 503 long after the outage.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # Our own retries below are the policy; gRPC's built-in ones would multiply them.
    ("grpc.enable_retries", 0),
]

Req = TypeVar("Req", contravariant=True)
Resp = TypeVar("Resp", covariant=True)
R = TypeVar("R")
Q = TypeVar("Q")


class _Unary(Protocol[Req, Resp]):
    def __call__(
        self,
        request: Req,
        *,
        timeout: float | None = ...,
        metadata: tuple[tuple[str, str], ...] | None = ...,
        wait_for_ready: bool | None = ...,
    ) -> Awaitable[Resp]: ...


class IngestError(Exception):
    """The internal call did not store the post; `code` says why (the last gRPC status seen)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class _TokenSource:
    """An `ingest` bearer token signed with SMS_INGEST_SECRET, refreshed before it expires."""

    def __init__(self, secret: str, user: str = SERVICE_USER, ttl: int = TOKEN_TTL_SECONDS) -> None:
        self._secret = secret
        self._user = user
        self._ttl = ttl
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._refresh_at = 0.0

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata carrying a token with at least the refresh margin left."""
        now = time.time()
        if now >= self._refresh_at:
            token = mint_token(self._secret, self._user, Role.INGEST, ttl_seconds=self._ttl)
            self._metadata = (("authorization", f"Bearer {token}"),)
            self._refresh_at = now + self._ttl - min(TOKEN_REFRESH_MARGIN_SECONDS, self._ttl // 2)
        return self._metadata


class IngestClient:
    """Calls SmsIngestService with retries; raises IngestError when a post could not be stored."""

    def __init__(
        self,
        target: str,
        ingest_secret: str,
        deadline_seconds: float,
        metrics: BridgeMetrics | None = None,
        token_ttl_seconds: int = TOKEN_TTL_SECONDS,
    ) -> None:
        if not ingest_secret:
            raise ValueError("SMS_INGEST_SECRET is required to call SmsIngestService")
        self._channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stub = ingest_pb2_grpc.SmsIngestServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._tokens = _TokenSource(ingest_secret, ttl=token_ttl_seconds)
        self._deadline = deadline_seconds
        self._metrics = metrics or BridgeMetrics()

    def connect(self) -> None:
        """Starts connecting now, so the first post does not pay for the handshake."""
        self._channel.get_state(try_to_connect=True)

    async def close(self) -> None:
        """Closes the channel (after in-flight calls, which the HTTP server has already drained)."""
        await self._channel.close()

    async def record_inbound(self, request: ingest_pb2.RecordInboundRequest) -> ingest_pb2.RecordInboundResponse:
        """Stores an inbound message (deduplicated by the server on message_sid)."""
        _add_sid(request.message_sid)
        resp = await self._call("RecordInbound", self._stub.RecordInbound, request, retry_not_found=False)
        _add_message(resp.message)
        log.info("inbound %s", "duplicate" if resp.duplicate else "stored")
        return resp

    async def record_status(self, request: ingest_pb2.RecordStatusRequest) -> ingest_pb2.RecordStatusResponse:
        """Records a status callback; an unknown sid is asked about again briefly before giving up."""
        _add_sid(request.message_sid)
        resp = await self._call("RecordStatus", self._stub.RecordStatus, request, retry_not_found=True)
        _add_message(resp.message)
        # The message's status as stored, not the post's text (which only the server checks).
        status = types_pb2.MessageStatus.Name(resp.message.status)
        log.info("status callback %s; message %s", "applied" if resp.applied else "not applied", status)
        return resp

    async def serving(self, within: float = 1.0) -> bool:
        """Whether the server answers its grpc.health.v1 check with SERVING within `within` seconds."""
        try:
            resp = await self._health.Check(health_pb2.HealthCheckRequest(service=INGEST_SERVICE), timeout=within)
        except grpc.aio.AioRpcError:
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    async def _call(self, method: str, rpc: _Unary[Q, R], request: Q, *, retry_not_found: bool) -> R:
        start = time.monotonic()
        result = "OK"
        try:
            return await self._attempts(method, rpc, request, start + self._deadline, retry_not_found)
        except IngestError as exc:
            result = exc.code.name
            raise
        finally:
            self._metrics.ingest_latency.observe(time.monotonic() - start, method, result)

    async def _attempts(self, method: str, rpc: _Unary[Q, R], request: Q, deadline: float, retry_not_found: bool) -> R:
        unavailable = iter(UNAVAILABLE_BACKOFF)
        not_found = iter(NOT_FOUND_BACKOFF if retry_not_found else ())
        conflict = iter(CONFLICT_BACKOFF)
        # Once the fast retries are spent, the next attempt waits for the channel to become ready for the
        # rest of the deadline: a server that is restarting gets the whole deadline to come back.
        wait_for_ready = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise IngestError(grpc.StatusCode.DEADLINE_EXCEEDED, "no time left for another attempt")
            try:
                metadata = self._tokens.metadata() + _trace_metadata()
                return await rpc(request, timeout=remaining, metadata=metadata, wait_for_ready=wait_for_ready)
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
                details = exc.details() or ""
                if code == grpc.StatusCode.UNAVAILABLE:
                    # After the fast retries, keep waiting for readiness until the deadline: a server
                    # draining (GOAWAY) or still starting may fail one call that the next one gets through.
                    pause = next(unavailable, None)
                    if pause is None:
                        pause = UNAVAILABLE_WAIT_PAUSE if wait_for_ready else 0.0
                        wait_for_ready = True
                    cause = "unavailable"
                elif _conflict(exc):
                    pause = next(conflict, None)
                    if pause is None:
                        raise IngestError(code, details) from None
                    pause *= random.uniform(0.5, 1.5)  # jitter: the racing writers must not collide again
                    cause = "conflict"
                elif code == grpc.StatusCode.NOT_FOUND:
                    pause = next(not_found, None)
                    if pause is None:
                        raise IngestError(code, details) from None
                    cause = "not_found"
                else:
                    raise IngestError(code, details) from None
            self._metrics.ingest_retries.inc(method, cause)
            await _sleep_within(pause, deadline)


def _trace_metadata() -> tuple[tuple[str, str], ...]:
    """The post's trace id as `x-request-id`, so the server's lines of this call carry the bridge's trace id."""
    trace_id = log_context.current().get("trace_id")
    return ((log_context.REQUEST_ID_KEY, trace_id),) if trace_id else ()


def _add_sid(sid: str) -> None:
    """The post's MessageSid as `twilio_sid` for the rest of the post (the middleware's bind), when loggable."""
    log_context.add(twilio_sid=log_context.bounded_id(sid))


def _add_message(message: types_pb2.Message) -> None:
    """The stored message's ids for the rest of the post (the server answered with the message)."""
    log_context.add(message_id=message.id, conversation_id=message.conversation_id)


def _conflict(exc: grpc.aio.AioRpcError) -> bool:
    """Whether the call lost a race with another writer and may simply be repeated."""
    return exc.code() == grpc.StatusCode.ABORTED and error_reason(exc) == Reason.CONCURRENT_UPDATE


async def _sleep_within(pause: float, deadline: float, clock: Callable[[], float] = time.monotonic) -> None:
    """Sleeps `pause` seconds, but never past `deadline`."""
    await asyncio.sleep(max(0.0, min(pause, deadline - clock())))
