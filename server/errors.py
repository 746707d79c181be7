"""Domain errors, and the one place they become gRPC statuses with a google.rpc.ErrorInfo reason."""

from __future__ import annotations

from typing import TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2, message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from server.reasons import Reason

ERROR_DOMAIN = "sms-gateway"


class DomainError(Exception):
    """Base of every error the core raises on purpose; `reason` is the stable, machine-readable name."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: Reason = Reason.INTERNAL
    # Seconds after which a retry may succeed; sent as a google.rpc.RetryInfo detail when set.
    retry_after: float | None = None

    def __init__(self, message: str, reason: Reason | None = None, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = metadata


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = Reason.INVALID_ARGUMENT

    def __init__(self, field: str, message: str, reason: Reason | None = None) -> None:
        super().__init__(f"{field}: {message}", reason, field=field)
        self.field = field


class NotFound(DomainError):
    code = grpc.StatusCode.NOT_FOUND
    reason = Reason.NOT_FOUND


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = Reason.ALREADY_EXISTS


class FailedPrecondition(DomainError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = Reason.FAILED_PRECONDITION


class Aborted(DomainError):
    """A lost race; the caller may retry at once."""

    code = grpc.StatusCode.ABORTED
    reason = Reason.ABORTED


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = Reason.PERMISSION_DENIED


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = Reason.UNAUTHENTICATED


class Unavailable(DomainError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = Reason.UNAVAILABLE


class ResourceExhausted(DomainError):
    """A limit of the caller's was reached; a retry after `retry_after` seconds may succeed."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = Reason.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after: float, reason: Reason | None = None) -> None:
        super().__init__(message, reason)
        self.retry_after = retry_after


def _pack(detail: message.Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def to_status(error: DomainError) -> grpc.Status:
    """The rich gRPC status for a domain error (canonical code + ErrorInfo detail, and RetryInfo when it has one)."""
    info = error_details_pb2.ErrorInfo(reason=error.reason.value, domain=ERROR_DOMAIN, metadata=error.metadata)
    details = [_pack(info)]
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(max(0, round(error.retry_after * 1e9)))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    code_value: int = error.code.value[0]
    status = status_pb2.Status(code=code_value, message=error.message, details=details)
    result: grpc.Status = rpc_status.to_status(status)
    return result


D = TypeVar("D", error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo)


def _detail(exc: grpc.aio.AioRpcError | grpc.RpcError, kind: type[D]) -> D | None:
    """The first detail of type `kind` in a failed call's rich status."""
    status = rpc_status.from_call(exc)
    for detail in status.details if status is not None else ():
        if detail.Is(kind.DESCRIPTOR):
            found = kind()
            detail.Unpack(found)
            return found
    return None


def error_reason(exc: grpc.aio.AioRpcError | grpc.RpcError) -> str | None:
    """The ErrorInfo reason carried by a failed call, for clients and tests."""
    info = _detail(exc, error_details_pb2.ErrorInfo)
    return None if info is None else str(info.reason)


def retry_delay(exc: grpc.aio.AioRpcError | grpc.RpcError) -> float | None:
    """The RetryInfo delay (seconds) carried by a failed call, for clients and tests."""
    info = _detail(exc, error_details_pb2.RetryInfo)
    return None if info is None else info.retry_delay.ToNanoseconds() / 1e9
