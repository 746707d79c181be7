"""Domain errors, and the one place they become gRPC statuses with a google.rpc.ErrorInfo reason."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from server.reasons import Reason

ERROR_DOMAIN = "sms-gateway"


class DomainError(Exception):
    """Base of every error the core raises on purpose; `reason` is the stable, machine-readable name."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: Reason = Reason.INTERNAL

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


def to_status(error: DomainError) -> grpc.Status:
    """The rich gRPC status for a domain error (canonical code + ErrorInfo detail)."""
    info = error_details_pb2.ErrorInfo(reason=error.reason.value, domain=ERROR_DOMAIN, metadata=error.metadata)
    detail = any_pb2.Any()
    detail.Pack(info)
    code_value: int = error.code.value[0]
    status = status_pb2.Status(code=code_value, message=error.message, details=[detail])
    result: grpc.Status = rpc_status.to_status(status)
    return result


def error_reason(exc: grpc.aio.AioRpcError | grpc.RpcError) -> str | None:
    """The ErrorInfo reason carried by a failed call, for clients and tests."""
    status = rpc_status.from_call(exc)
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return None
