"""Start-up and shutdown of the gRPC server: stores, servicers, health, reflection, signals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO

import grpc
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from redis.asyncio import Redis
from sms.v1 import ingest_pb2, ingest_pb2_grpc, sms_pb2, sms_pb2_grpc

from server.admin import Admin
from server.config import Config
from server.embedded import EmbeddedServer, start_mongo, start_redis
from server.events import EventLog
from server.gateway import Gateway
from server.hub import Hub
from server.ingest import IngestServicer
from server.send_queue import SendQueue
from server.service import SmsServicer
from server.store import Store

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    sms_pb2.DESCRIPTOR.services_by_name["SmsService"].full_name,
    ingest_pb2.DESCRIPTOR.services_by_name["SmsIngestService"].full_name,
)
HEALTH_PROBE_SECONDS = 1.0

# Keepalive: pings find dead peers behind NATs and proxies within ~40 s; clients may ping every 10 s
# even with no call open (the subscribe helper and Envoy keep long streams this way).
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]


@dataclass
class Resources:
    """The connections a process holds, and any embedded servers it started to get them."""

    cfg: Config
    store: Store
    redis: Redis
    arq: ArqRedis
    embedded: list[EmbeddedServer] = field(default_factory=list)

    async def close(self) -> None:
        await self.arq.aclose()
        await self.redis.aclose()
        await self.store.close()
        for server in reversed(self.embedded):
            server.stop()


def _embedded_log(cfg: Config, name: str) -> IO[bytes]:
    """Embedded servers log to a file beside their data, not into this process's output."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    return open(cfg.data_dir / f"{name}.log", "ab")


@contextlib.asynccontextmanager
async def open_resources(cfg: Config) -> AsyncIterator[Resources]:
    """Connects to MongoDB and Redis, starting embedded servers when no URI is configured."""
    embedded: list[EmbeddedServer] = []
    mongodb_uri, redis_url = cfg.mongodb_uri, cfg.redis_url
    if mongodb_uri is None:
        server = await asyncio.to_thread(start_mongo, cfg.data_dir / "mongo", 0, _embedded_log(cfg, "mongo"))
        embedded.append(server)
        mongodb_uri = server.uri
        log.info("started embedded SecantusDB on port %d (data in %s)", server.port, cfg.data_dir / "mongo")
    if redis_url is None:
        server = await asyncio.to_thread(start_redis, cfg.data_dir / "redis", 0, _embedded_log(cfg, "redis"))
        embedded.append(server)
        redis_url = server.uri
        log.info("started embedded Valkey on port %d", server.port)
    store = Store.connect(mongodb_uri, cfg.mongodb_db)
    redis: Redis = Redis.from_url(redis_url, socket_connect_timeout=3, health_check_interval=10)
    arq = await create_pool(RedisSettings.from_dsn(redis_url), default_queue_name=cfg.arq_queue)
    res = Resources(cfg, store, redis, arq, embedded)
    try:
        yield res
    finally:
        await res.close()


async def watch_health(health: HealthServicer, res: Resources, stopping: asyncio.Event) -> None:
    """Reports NOT_SERVING while MongoDB or Redis does not answer."""
    last: int | None = None
    while not stopping.is_set():
        try:
            await asyncio.wait_for(asyncio.gather(res.store.ping(), res.redis.ping()), 2)
            state = health_pb2.HealthCheckResponse.SERVING
        except Exception as exc:
            state = health_pb2.HealthCheckResponse.NOT_SERVING
            if last != state:
                log.warning("dependency check failed: %s", exc)
        if state != last and not stopping.is_set():
            for name in ("", *SERVICE_NAMES):
                await health.set(name, state)
            last = state
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), HEALTH_PROBE_SECONDS)


async def serve(cfg: Config, ready: asyncio.Event | None = None) -> None:
    """Runs the server until SIGTERM/SIGINT, then drains in-flight calls and returns."""
    cfg.require("SMS_JWT_SECRET")
    if not (cfg.twilio_from_number or cfg.twilio_messaging_service_sid):
        log.warning(
            "neither TWILIO_FROM_NUMBER nor TWILIO_MESSAGING_SERVICE_SID is set: outbound conversations "
            "are filed under %r and will not meet the replies to them",
            cfg.our_number,
        )
    async with open_resources(cfg) as res:
        await res.store.ensure_indexes()
        events = EventLog(res.redis, cfg.event_stream, cfg.event_retention)
        gateway = Gateway(cfg, res.store, events, SendQueue(res.arq, cfg.arq_queue))
        hub = Hub(cfg, res.redis)
        admin = Admin(cfg, res.store, res.arq, gateway)
        server = grpc.aio.server(options=KEEPALIVE_OPTIONS)
        sms_pb2_grpc.add_SmsServiceServicer_to_server(SmsServicer(cfg, gateway, hub, admin), server)
        ingest_pb2_grpc.add_SmsIngestServiceServicer_to_server(IngestServicer(gateway, cfg.jwt_secret), server)
        health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            server,
        )
        server.add_insecure_port(cfg.grpc_addr)
        await server.start()
        await hub.start()
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        watcher = asyncio.create_task(watch_health(health, res, stopping))
        log.info("sms-gateway server listening on %s", cfg.grpc_addr)
        if ready is not None:
            ready.set()
        await stopping.wait()
        log.info("shutting down: NOT_SERVING, ending streams, draining calls for up to %.0f s", cfg.drain_seconds)
        await health.enter_graceful_shutdown()
        await hub.close()
        await server.stop(cfg.drain_seconds)
        await watcher
        await admin.close()
    log.info("server stopped")


def run(cfg: Config) -> int:
    """Entry point of `sms-gateway server`."""
    asyncio.run(serve(cfg))
    return 0
