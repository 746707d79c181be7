"""Health probes for supervised children: TCP, HTTP, gRPC health, Redis, and the arq worker's heartbeat key."""

from __future__ import annotations

import contextlib
import socket
import urllib.error
import urllib.request

from arq.constants import health_check_key_suffix

from devstack.supervisor import HealthCheck
from server.config import Config, split_addr

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


def redis_check(url: str, key: str | None = None, cfg: Config | None = None) -> HealthCheck:
    """Up when Redis answers PING (and, with `key`, when that key exists).

    `cfg`: the configured Redis (REDIS_URL's TLS settings, or its Sentinel), as the server and worker reach it;
    without it, `url` as it is (a Redis the stack started itself).
    """

    def check() -> bool:
        # Imported late: the supervisor's other probes must not pay for (or depend on) the Redis client.
        import redis

        from server.connections import sync_redis

        try:
            with sync_redis(cfg, url, PROBE_TIMEOUT) as client:
                return bool(client.exists(key)) if key else bool(client.ping())
        except redis.RedisError:
            return False

    return check


def worker_heartbeat_key(queue: str) -> str:
    """The key an arq worker on `queue` keeps refreshing while it runs."""
    return queue + health_check_key_suffix


def worker_check(url: str, queue: str, cfg: Config | None = None) -> HealthCheck:
    """Up when the arq worker on `queue` has written its heartbeat key (`cfg`: as for redis_check)."""
    return redis_check(url, worker_heartbeat_key(queue), cfg)


def forget_worker_heartbeat(url: str, queue: str, cfg: Config | None = None) -> None:
    """Deletes a previous worker's heartbeat key, if Redis is reachable (`cfg`: as for redis_check)."""
    from server.connections import sync_redis

    # The key outlives a worker by its TTL (and Valkey persists it): a leftover would look healthy.
    with contextlib.suppress(Exception), sync_redis(cfg, url, PROBE_TIMEOUT) as client:
        client.delete(worker_heartbeat_key(queue))
