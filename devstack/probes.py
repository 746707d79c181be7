"""Health probes for supervised children: TCP, HTTP, gRPC health, Redis, and the arq worker's heartbeat key."""

from __future__ import annotations

import contextlib
import socket
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

from arq.constants import health_check_key_suffix

from devstack.supervisor import HealthCheck
from server.config import split_addr

if TYPE_CHECKING:
    import redis

PROBE_TIMEOUT = 1.0


def tcp_check(addr: str) -> HealthCheck:
    """Up when host:port accepts a connection."""
    host, port = split_addr(addr)

    def check() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    return check


def http_check(url: str) -> HealthCheck:
    """Up when GET `url` answers 200."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT) as resp:
                return int(resp.status) == 200
        except (OSError, urllib.error.URLError, ValueError):
            return False

    return check


def grpc_check(target: str) -> HealthCheck:
    """Up when grpc.health.v1 reports SERVING for the whole server."""

    def check() -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        # A fresh channel per check: a long-lived one would sit in reconnect backoff after early refusals.
        with grpc.insecure_channel(target) as channel:
            try:
                request = health_pb2.HealthCheckRequest()
                resp = health_pb2_grpc.HealthStub(channel).Check(request, timeout=PROBE_TIMEOUT)
            except grpc.RpcError:
                return False
            return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    return check


def _redis(url: str) -> redis.Redis:
    # Imported late: the supervisor's other probes must not pay for (or depend on) the Redis client.
    import redis

    return redis.Redis.from_url(url, socket_timeout=PROBE_TIMEOUT, socket_connect_timeout=PROBE_TIMEOUT)


def redis_check(url: str, key: str | None = None) -> HealthCheck:
    """Up when Redis answers PING (and, with `key`, when that key exists)."""

    def check() -> bool:
        import redis

        client = _redis(url)
        try:
            return bool(client.exists(key)) if key else bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    return check


def worker_heartbeat_key(queue: str) -> str:
    """The key an arq worker on `queue` keeps refreshing while it runs."""
    return queue + health_check_key_suffix


def worker_check(url: str, queue: str) -> HealthCheck:
    """Up when the arq worker on `queue` has written its heartbeat key."""
    return redis_check(url, worker_heartbeat_key(queue))


def forget_worker_heartbeat(url: str, queue: str) -> None:
    """Deletes a previous worker's heartbeat key, if Redis is reachable."""
    # The key outlives a worker by its TTL (and Valkey persists it): a leftover would look healthy.
    with contextlib.suppress(Exception):
        client = _redis(url)
        try:
            client.delete(worker_heartbeat_key(queue))
        finally:
            client.close()
