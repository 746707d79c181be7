"""The edge between gRPC and the core: the RPC decorators authenticate the caller and map domain errors.

Every handler is written `async def Method(self, request, context, caller)`: the decorator verifies the bearer
token with the key of the role it claims (server/auth.py) and the caller's role against the roles the decorator
names (any user role when it names none: the bridge's `ingest` role only where named), and hands the caller in.
Domain errors raised anywhere in the call, or anywhere in a stream, become a status with its ErrorInfo reason
here, in one place. Each call's log lines carry its method and trace id (server/log_context.py).

The decorators also record go-grpc-prometheus's server metrics (server/metrics.py) with the code each call really
ends with: OK, the mapped domain error's, UNAUTHENTICATED, CANCELLED when the client went away,
DEADLINE_EXCEEDED when its deadline passed, UNKNOWN for a crash. Whether to record is the servicer's
`cfg.metrics_enabled`, read per call from the Config the decorators already hold (no global switch).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
from prometheus_client import Counter
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from server import log_context
from server.auth import USER_ROLES, Caller, Role, TokenPolicy, caller_from_metadata
from server.config import Config
from server.errors import DomainError, FailedPrecondition, PermissionDenied, Unavailable, to_status
from server.limits import quote
from server.metrics import (
    GRPC_HANDLED,
    GRPC_HANDLING_SECONDS,
    GRPC_MSG_RECEIVED,
    GRPC_MSG_SENT,
    GRPC_STARTED,
)
from server.reasons import Reason

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]


class Servicer(Protocol):
    """A servicer whose methods the decorators wrap: its settings hold the keys that sign its callers' tokens."""

    cfg: Config


S = TypeVar("S", bound=Servicer)
Handler = Callable[[S, Req, Context, Caller], Awaitable[Resp]]
Method = Callable[[S, Req, Context], Awaitable[Resp]]
StreamHandler = Callable[[S, Req, Context, Caller], AsyncIterator[Resp]]
StreamMethod = Callable[[S, Req, Context], AsyncIterator[Resp]]


# MongoDB or Redis failing under a call: the caller may retry (UNAVAILABLE), never UNKNOWN. A duplicate key is
# not among these where it means something: the store turns it into a result before it gets here.
BACKEND_ERRORS: tuple[type[Exception], ...] = (PyMongoError, RedisError)


def _backend_unavailable(exc: Exception) -> Unavailable:
    log.warning("store unavailable during a call: %s: %s", type(exc).__name__, quote(str(exc), 200))
    return Unavailable("the message store is unavailable; retry", Reason.STORE_UNAVAILABLE)


def authenticate(cfg: Config, context: Context, roles: tuple[Role, ...]) -> Caller:
    """The caller of this call; PermissionDenied when their role is not among `roles` (default: USER_ROLES)."""
    if Role.INGEST in roles and not cfg.ingest_secret:
        # The bridge's credential cannot be checked: refuse plainly, so the bridge answers Twilio 503 (a retry)
        # and the operator sees why, instead of every post failing as a bad token.
        raise FailedPrecondition(
            "SMS_INGEST_SECRET is not set on this server: SmsIngestService is off", Reason.INGEST_NOT_CONFIGURED
        )
    caller = caller_from_metadata(TokenPolicy.from_config(cfg), context.invocation_metadata())  # type: ignore[arg-type]
    if caller.role not in (roles or USER_ROLES):
        raise PermissionDenied(f"role {caller.role.value} may not call this method", Reason.ROLE_NOT_ALLOWED)
    return caller


class _Series:
    """One method's series, labelled once: a call then costs a few increments, not a label lookup each."""

    __slots__ = ("handled", "handling", "labels", "received", "sent", "started")

    def __init__(self, grpc_type: str, service: str, method: str) -> None:
        self.labels = (grpc_type, service, method)
        self.started = GRPC_STARTED.labels(*self.labels)
        self.received = GRPC_MSG_RECEIVED.labels(*self.labels)
        self.sent = GRPC_MSG_SENT.labels(*self.labels)
        self.handling = GRPC_HANDLING_SECONDS.labels(*self.labels)
        self.handled: dict[grpc.StatusCode, Counter] = {}

    def begin(self) -> float:
        """Counts a call started (with its one request message); returns its start time."""
        self.started.inc()
        self.received.inc()
        return time.perf_counter()

    def end(self, code: grpc.StatusCode, started: float) -> None:
        """Counts the call handled with `code` and observes how long it took."""
        child = self.handled.get(code)
        if child is None:
            # At most one per status code (17): the dict stays small and needs no lock under asyncio.
            child = self.handled[code] = GRPC_HANDLED.labels(*self.labels, code.name)
        child.inc()
        self.handling.observe(time.perf_counter() - started)


@functools.cache
def service_name(cls: type) -> str:
    """The full gRPC service name a servicer class implements ("sms.v1.SmsService"), from its generated base
    class (`<Service>Servicer` in a `*_pb2_grpc` module) and that module's descriptor; the class name otherwise."""
    for base in cls.__mro__:
        module = base.__module__
        if module.endswith("_pb2_grpc") and base.__name__.endswith("Servicer"):
            pb2 = sys.modules.get(module.removesuffix("_grpc"))
            service = pb2.DESCRIPTOR.services_by_name.get(base.__name__.removesuffix("Servicer")) if pb2 else None
            if service is not None:
                return str(service.full_name)
    return cls.__name__


def _series_cache(grpc_type: str, method: str) -> Callable[[type], _Series]:
    """The series of `method` per servicer class (known only at call time: the decorator runs in its body)."""

    @functools.cache
    def series(cls: type) -> _Series:
        return _Series(grpc_type, service_name(cls), method)

    return series


def _ended_with(context: Context, exc: BaseException | None) -> grpc.StatusCode:
    """The status a call ends with, given the exception that ended the handler (None: it returned)."""
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        # grpc cancels the handler when the client cancels or goes away, and when the deadline passes.
        remaining = context.time_remaining()
        return (
            grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED
        )
    # Set by abort_with_status (the mapped domain errors, UNAUTHENTICATED among them) or a handler's set_code.
    code: grpc.StatusCode | None = context.code()
    if code is not None:
        return code
    return grpc.StatusCode.OK if exc is None else grpc.StatusCode.UNKNOWN  # grpc answers a crash with UNKNOWN


def unary(*roles: Role) -> Callable[[Handler[S, Req, Resp]], Method[S, Req, Resp]]:
    """A unary RPC open to `roles` (any user role when none are named)."""

    def decorate(handler: Handler[S, Req, Resp]) -> Method[S, Req, Resp]:
        series_of = _series_cache("unary", handler.__name__)

        async def call(self: S, request: Req, context: Context) -> Resp:
            with log_context.for_call(handler.__name__, context.invocation_metadata()):
                try:
                    try:
                        return await handler(self, request, context, authenticate(self.cfg, context, roles))
                    except BACKEND_ERRORS as exc:
                        raise _backend_unavailable(exc) from exc
                except DomainError as exc:
                    await context.abort_with_status(to_status(exc))
                    raise  # abort_with_status raises; this keeps type checkers sure we never fall through

        @functools.wraps(handler)
        async def wrapper(self: S, request: Req, context: Context) -> Resp:
            if not self.cfg.metrics_enabled:
                return await call(self, request, context)
            series = series_of(type(self))
            started = series.begin()
            ended: BaseException | None = None
            try:
                response = await call(self, request, context)
            except BaseException as exc:
                ended = exc
                raise
            finally:
                code = _ended_with(context, ended)
                series.end(code, started)
            if code == grpc.StatusCode.OK:
                series.sent.inc()
            return response

        return wrapper

    return decorate


def streaming(*roles: Role) -> Callable[[StreamHandler[S, Req, Resp]], StreamMethod[S, Req, Resp]]:
    """A server-streaming RPC open to `roles`; errors map the same way wherever in the stream they arise."""

    def decorate(handler: StreamHandler[S, Req, Resp]) -> StreamMethod[S, Req, Resp]:
        series_of = _series_cache("server_stream", handler.__name__)

        async def stream(self: S, request: Req, context: Context) -> AsyncGenerator[Resp, None]:
            # grpc drives the stream from the call's own task, so the fields bound here hold for every step.
            with log_context.for_call(handler.__name__, context.invocation_metadata()):
                try:
                    try:
                        caller = authenticate(self.cfg, context, roles)
                        async for response in handler(self, request, context, caller):
                            yield response
                    except BACKEND_ERRORS as exc:
                        raise _backend_unavailable(exc) from exc
                except DomainError as exc:
                    await context.abort_with_status(to_status(exc))

        @functools.wraps(handler)
        async def wrapper(self: S, request: Req, context: Context) -> AsyncIterator[Resp]:
            # aclosing: the inner stream is closed with this one (the client left), not at garbage collection.
            async with contextlib.aclosing(stream(self, request, context)) as responses:
                if not self.cfg.metrics_enabled:
                    async for response in responses:
                        yield response
                    return
                series = series_of(type(self))
                started = series.begin()
                ended: BaseException | None = None
                try:
                    async for response in responses:
                        yield response
                        # Resumed: grpc has written the message and asks for the next one.
                        series.sent.inc()
                except BaseException as exc:
                    ended = exc  # GeneratorExit here: grpc closed the stream early (the client went away)
                    raise
                finally:
                    series.end(_ended_with(context, ended), started)

        return wrapper

    return decorate
