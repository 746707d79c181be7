"""Shared fixtures: real SecantusDB and Valkey on free ports, and a real gRPC server process."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from pymongo import AsyncMongoClient
from sms.v1 import ingest_pb2_grpc, sms_pb2_grpc

from server.config import without_settings
from server.embedded import EmbeddedServer, start_mongo, start_redis
from tests.support.identities import INGEST_SECRET, JWT_SECRET
from tests.support.launch import start_server
from tests.support.processes import ChildProcess


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
        SMS_INGEST_SECRET=INGEST_SECRET,
        SMS_DEFAULT_REGION="US",
        TWILIO_FROM_NUMBER="+15005550006",
        SMS_HEARTBEAT_SECONDS="1",
        # The suites send hundreds of messages and open hundreds of streams per user as fast as they can; the
        # limits' own tests (test_access.py) run servers with theirs.
        SMS_SEND_RATE_PER_USER="1000",
        SMS_SEND_BURST_PER_USER="1000",
        SMS_MAX_STREAMS_PER_USER="1000",
    )
    return env


@pytest.fixture(scope="session")
def grpc_server(base_env: dict[str, str]) -> Iterator[str]:
    """One server process for the session; yields its address."""
    proc, addr = start_server(base_env)
    yield addr
    proc.stop()


@pytest.fixture(scope="session")
def server_proc_factory(base_env: dict[str, str]) -> Iterator[list[ChildProcess]]:
    """Processes a test started itself; stopped at the end of the session whatever happened."""
    procs: list[ChildProcess] = []
    yield procs
    for p in procs:
        p.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client for the bridge and the simulator."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


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
