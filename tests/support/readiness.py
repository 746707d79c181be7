"""Waits for a service to be ready: a gRPC server's health status, or a port that accepts connections."""

from __future__ import annotations

import functools
import socket

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.polling import eventually
from tests.support.processes import ChildProcess

_SERVING_STATUS = health_pb2.HealthCheckResponse.ServingStatus


def health_status(target: str, timeout: float = 2.0) -> str:
    """The health of the server at `target` ("SERVING", "NOT_SERVING"…), or the error code when it does not answer."""
    with grpc.insecure_channel(target) as channel:
        try:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status
        except grpc.RpcError as exc:
            return str(exc.code().name)
    return str(_SERVING_STATUS.Name(status))


def wait_health(target: str, want: str = "SERVING", within: float = 30.0, proc: ChildProcess | None = None) -> None:
    """Waits until the server at `target` reports `want`; fails at once if `proc` (the server) exits."""

    def probe() -> str:
        if proc is not None:
            proc.check_alive()
        # A channel per look: one kept across a server's start would sit out gRPC's reconnect backoff.
        return health_status(target, timeout=1)

    eventually(probe, within, f"{target} to be {want}", until=lambda status: status == want, interval=0.1)


def _connect(host: str, port: int, proc: ChildProcess | None) -> bool:
    if proc is not None:
        proc.check_alive()
    with socket.create_connection((host, port), timeout=0.5):
        return True


def wait_listening(host: str, port: int, within: float = 30.0, proc: ChildProcess | None = None) -> None:
    """Waits until host:port accepts connections; fails at once if `proc` (the listener) exits."""
    eventually(
        functools.partial(_connect, host, port, proc),
        within,
        f"{host}:{port} to accept connections",
        ignoring=(OSError,),
    )
