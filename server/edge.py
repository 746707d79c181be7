"""The edge between gRPC and the core: authentication and the domain-error → status mapping."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from server.auth import Caller, Role, caller_from_metadata
from server.errors import DomainError, PermissionDenied, to_status

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]


def unary(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Turns domain errors raised by a unary handler into rich statuses; the one mapping point."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        try:
            return await handler(self, request, context)
        except DomainError as exc:
            await context.abort_with_status(to_status(exc))
            raise  # abort_with_status raises; this keeps type checkers sure we never fall through

    return wrapper


StreamHandler = Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]]


def streaming(handler: StreamHandler[Req, Resp]) -> StreamHandler[Req, Resp]:
    """The same mapping for a server-streaming handler, wherever in the stream the error is raised."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Resp]:
        try:
            async for response in handler(self, request, context):
                yield response
        except DomainError as exc:
            await context.abort_with_status(to_status(exc))

    return wrapper


def authenticate(secret: str, context: grpc.aio.ServicerContext[Any, Any], *roles: Role) -> Caller:
    """The caller of this call; PermissionDenied when their role is not among `roles` (if given)."""
    caller = caller_from_metadata(secret, context.invocation_metadata())  # type: ignore[arg-type]
    if roles and caller.role not in roles:
        raise PermissionDenied(f"role {caller.role.value} may not call this method", "ROLE_NOT_ALLOWED")
    return caller
