"""Shared fixtures: real SecantusDB and Valkey on free ports, and a real gRPC server process."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from pymongo import AsyncMongoClient
from sms.v1 import ingest_pb2_grpc, sms_pb2_grpc

from server.auth import mint_token
from server.config import without_settings
from server.embedded import EmbeddedServer, start_mongo, start_redis
from tests.procs import Proc, start_server

JWT_SECRET = "test-secret-not-for-production-0123456789"


@pytest.fixture(scope="session")
def mongo() -> Iterator[EmbeddedServer]:
    server = start_mongo(":memory:")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedServer]:
    with tempfile.TemporaryDirectory(prefix="sms-test-valkey-") as tmp:
        server = start_redis(Path(tmp))
        yield server
        server.stop()


@pytest.fixture(scope="session")
def base_env(mongo: EmbeddedServer, redis_server: EmbeddedServer) -> dict[str, str]:
    """Environment for our processes: the session's database (fresh name) and Redis."""
    env = without_settings(os.environ)
    env.update(
        MONGODB_URI=mongo.uri,
        MONGODB_DB=f"sms_test_{uuid.uuid4().hex[:8]}",
        REDIS_URL=redis_server.uri,
        SMS_JWT_SECRET=JWT_SECRET,
        SMS_DEFAULT_REGION="US",
        SMS_DEFAULT_OWNER="inbox-owner",
        TWILIO_FROM_NUMBER="+15005550006",
        SMS_HEARTBEAT_SECONDS="1",
    )
    return env


@pytest.fixture(scope="session")
def grpc_server(base_env: dict[str, str]) -> Iterator[str]:
    """One server process for the session; yields its address."""
    proc, addr = start_server(base_env)
    yield addr
    proc.stop()


@pytest.fixture(scope="session")
def server_proc_factory(base_env: dict[str, str]) -> Iterator[list[Proc]]:
    """Processes a test started itself; stopped at the end of the session whatever happened."""
    procs: list[Proc] = []
    yield procs
    for p in procs:
        p.stop()


def token(user: str, role: str = "agent") -> str:
    """A valid token for the test secret."""
    return mint_token(JWT_SECRET, user, role)


def auth(user: str, role: str = "agent") -> tuple[tuple[str, str], ...]:
    """Call metadata for `user` with `role`."""
    return (("authorization", f"Bearer {token(user, role)}"),)


def unique_user(prefix: str = "agent") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


_counter = iter(range(10_000, 100_000))


def unique_number() -> str:
    """A valid US number (E.164) not used by any other test in this session."""
    n = next(_counter)
    return f"+1415555{n % 10000:04d}" if n < 20_000 else f"+1628555{n % 10000:04d}"


@pytest.fixture
async def channel(grpc_server: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(grpc_server) as ch:
        yield ch


@pytest.fixture
def sms(channel: grpc.aio.Channel) -> sms_pb2_grpc.SmsServiceStub:
    return sms_pb2_grpc.SmsServiceStub(channel)


@pytest.fixture
def ingest(channel: grpc.aio.Channel) -> ingest_pb2_grpc.SmsIngestServiceStub:
    return ingest_pb2_grpc.SmsIngestServiceStub(channel)


@pytest.fixture
async def db(mongo: EmbeddedServer, base_env: dict[str, str]) -> AsyncIterator[object]:
    """The session's database, for assertions on what was stored."""
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(mongo.uri)
    yield client[base_env["MONGODB_DB"]]
    await client.close()
