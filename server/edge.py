"""The edge between gRPC and the core: the RPC decorators authenticate the caller and map domain errors.

Every handler is written `async def Method(self, request, context, caller)`: the decorator verifies the bearer
token with the key of the role it claims (server/auth.py) and the caller's role against the roles the decorator
names (any user role when it names none: the bridge's `ingest` role only where named), and hands the caller in.
Domain errors raised anywhere in the call, or anywhere in a stream, become a status with its ErrorInfo reason
here, in one place.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from server.auth import USER_ROLES, Caller, Role, TokenPolicy, caller_from_metadata
from server.config import Config
from server.errors import DomainError, FailedPrecondition, PermissionDenied, Unavailable, to_status
from server.limits import quote
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


def unary(*roles: Role) -> Callable[[Handler[S, Req, Resp]], Method[S, Req, Resp]]:
    """A unary RPC open to `roles` (any user role when none are named)."""

    def decorate(handler: Handler[S, Req, Resp]) -> Method[S, Req, Resp]:
        @functools.wraps(handler)
        async def wrapper(self: S, request: Req, context: Context) -> Resp:
            try:
                try:
                    return await handler(self, request, context, authenticate(self.cfg, context, roles))
                except BACKEND_ERRORS as exc:
                    raise _backend_unavailable(exc) from exc
            except DomainError as exc:
                await context.abort_with_status(to_status(exc))
                raise  # abort_with_status raises; this keeps type checkers sure we never fall through

        return wrapper

    return decorate


def streaming(*roles: Role) -> Callable[[StreamHandler[S, Req, Resp]], StreamMethod[S, Req, Resp]]:
    """A server-streaming RPC open to `roles`; errors map the same way wherever in the stream they arise."""

    def decorate(handler: StreamHandler[S, Req, Resp]) -> StreamMethod[S, Req, Resp]:
        @functools.wraps(handler)
        async def wrapper(self: S, request: Req, context: Context) -> AsyncIterator[Resp]:
            try:
                try:
                    caller = authenticate(self.cfg, context, roles)
                    async for response in handler(self, request, context, caller):
                        yield response
                except BACKEND_ERRORS as exc:
                    raise _backend_unavailable(exc) from exc
            except DomainError as exc:
                await context.abort_with_status(to_status(exc))

        return wrapper

    return decorate
