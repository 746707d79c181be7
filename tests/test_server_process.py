"""The server as a process: reflection through grpcurl, health that follows its stores, clean SIGTERM."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.embedded import EmbeddedServer, start_redis
from tests.conftest import token, unique_number
from tests.procs import start_server

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or "grpcurl"


def grpcurl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=60)


def test_grpcurl_lists_services_and_sends(grpc_server: str) -> None:
    listed = grpcurl(grpc_server, "list")
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert {"sms.v1.SmsService", "sms.v1.SmsIngestService", "grpc.health.v1.Health"} <= services
    described = grpcurl(grpc_server, "describe", "sms.v1.SmsService")
    assert "rpc Send" in described.stdout and "rpc Subscribe" in described.stdout
    number = unique_number()
    sent = grpcurl(
        "-H",
        f"authorization: Bearer {token('grpcurl-user')}",
        "-d",
        json.dumps({"to": number, "body": "via grpcurl"}),
        grpc_server,
        "sms.v1.SmsService/Send",
    )
    assert sent.returncode == 0, sent.stderr
    message = json.loads(sent.stdout)["message"]
    assert message["toNumber" if "toNumber" in message else "to_number"] == number
    denied = grpcurl("-d", "{}", grpc_server, "sms.v1.SmsService/ListConversations")
    assert denied.returncode != 0 and "Unauthenticated" in denied.stderr


def health_status(addr: str) -> int:
    with grpc.insecure_channel(addr) as ch:
        try:
            status: int = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=2).status
        except grpc.RpcError:
            return -1
        return status


def wait_status(addr: str, want: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health_status(addr) == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"health never became {want}; last {health_status(addr)}")


@pytest.fixture
def own_redis() -> Iterator[tuple[Path, EmbeddedServer]]:
    with tempfile.TemporaryDirectory(prefix="sms-test-own-valkey-") as tmp:
        server = start_redis(Path(tmp))
        yield Path(tmp), server
        server.stop()


def test_health_follows_redis(base_env: dict[str, str], own_redis: tuple[Path, EmbeddedServer]) -> None:
    data, redis = own_redis
    proc, addr = start_server({**base_env, "REDIS_URL": redis.uri})
    try:
        assert health_status(addr) == health_pb2.HealthCheckResponse.SERVING
        redis.stop()
        wait_status(addr, health_pb2.HealthCheckResponse.NOT_SERVING)
        restarted = start_redis(data, redis.port)
        try:
            wait_status(addr, health_pb2.HealthCheckResponse.SERVING)
        finally:
            restarted.stop()
    finally:
        proc.stop()


def test_health_follows_mongodb(base_env: dict[str, str]) -> None:
    from server.embedded import free_port, start_mongo

    with tempfile.TemporaryDirectory(prefix="sms-test-own-mongo-") as tmp:
        mongo = start_mongo(Path(tmp) / "db", free_port())
        proc, addr = start_server({**base_env, "MONGODB_URI": mongo.uri})
        try:
            assert health_status(addr) == health_pb2.HealthCheckResponse.SERVING
            mongo.stop()
            wait_status(addr, health_pb2.HealthCheckResponse.NOT_SERVING)
            mongo = start_mongo(Path(tmp) / "db", mongo.port)
            wait_status(addr, health_pb2.HealthCheckResponse.SERVING)
        finally:
            proc.stop()
            mongo.stop()


def test_sigterm_drains_and_exits_cleanly(base_env: dict[str, str]) -> None:
    proc, _ = start_server(base_env)
    assert proc.stop(signal.SIGTERM, timeout=20) == 0
    assert "server stopped" in proc.log()


def test_server_refuses_to_start_without_jwt_secret(base_env: dict[str, str]) -> None:
    env = {k: v for k, v in base_env.items() if k != "SMS_JWT_SECRET"}
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "server"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "SMS_JWT_SECRET" in done.stderr
