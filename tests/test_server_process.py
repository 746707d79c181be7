"""The server as a process: reflection through grpcurl, health that follows its stores, clean SIGTERM."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.embedded import EmbeddedServer, start_redis
from tests.support.identities import token, unique_number
from tests.support.launch import start_server
from tests.support.readiness import health_status, wait_health

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
        assert health_status(addr) == "SERVING"
        redis.stop()
        wait_health(addr, "NOT_SERVING", within=20)
        restarted = start_redis(data, redis.port)
        try:
            wait_health(addr, "SERVING", within=20)
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
            assert health_status(addr) == "SERVING"
            mongo.stop()
            wait_health(addr, "NOT_SERVING", within=20)
            mongo = start_mongo(Path(tmp) / "db", mongo.port)
            wait_health(addr, "SERVING", within=20)
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
