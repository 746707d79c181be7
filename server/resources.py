"""Start-up shared by the gRPC server and the worker: open MongoDB and Redis (or embedded ones), build the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from arq.connections import ArqRedis
from redis.asyncio import Redis
from redis.exceptions import RedisError

from server.config import Config
from server.connections import arq_redis, mongo_client, redis_client
from server.delivery_stats import DeliveryStats, stats_prefix
from server.embedded import EmbeddedServer, require_embedded, start_mongo, start_redis
from server.events import EventLog
from server.gateway import Gateway
from server.store import Store
from server.worker.queue import SendQueue

log = logging.getLogger(__name__)

# At start-up, Redis is tried this many times, this many seconds apart (arq's create_pool's defaults before).
REDIS_START_TRIES = 6
REDIS_START_DELAY = 1.0


@dataclass
class Resources:
    """The connections a process holds, the gateway built on them, and any embedded servers it started."""

    cfg: Config
    store: Store
    redis: Redis
    arq: ArqRedis
    gateway: Gateway
    embedded: list[EmbeddedServer] = field(default_factory=list)

    async def close(self) -> None:
        await self.arq.aclose()
        await self.redis.aclose()
        await self.store.close()
        for server in reversed(self.embedded):
            server.stop()


def _start_embedded(cfg: Config, name: str, start: Callable[[Path, int, IO[bytes]], EmbeddedServer]) -> EmbeddedServer:
    """Starts an embedded server with its data under the data dir; it logs to a file there, not to our output."""
    # Private: the embedded databases hold every message.
    cfg.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(cfg.data_dir / f"{name}.log", "ab") as output:
        # The child keeps its own copy of the file descriptor.
        return start(cfg.data_dir / name, 0, output)


async def _reach(client: Redis) -> None:
    """Waits until Redis answers, as arq's create_pool did: a Redis still starting is retried for a few seconds;
    one that stays away is the error (never its URL, which may carry a password)."""
    for attempt in range(1, REDIS_START_TRIES + 1):
        try:
            await client.ping()
            return
        except (OSError, RedisError) as exc:
            if attempt == REDIS_START_TRIES:
                raise
            # redis-py's messages name the host and port, never the password.
            log.warning("Redis not reachable yet (%s), %d tries left", exc, REDIS_START_TRIES - attempt)
            await asyncio.sleep(REDIS_START_DELAY)


@contextlib.asynccontextmanager
async def open_resources(cfg: Config) -> AsyncIterator[Resources]:
    """Connects to MongoDB and Redis (embedded servers when no URI is configured), ensures indexes, builds the
    gateway; closes everything on exit."""
    mongodb_uri, redis_url = cfg.mongodb_uri, cfg.redis_url
    # Both checked before either is started: exit 2 naming the remedies, with nothing left running.
    require_embedded(mongo=mongodb_uri is None, redis=redis_url is None)
    embedded: list[EmbeddedServer] = []
    try:
        if mongodb_uri is None:
            server = await asyncio.to_thread(_start_embedded, cfg, "mongo", start_mongo)
            embedded.append(server)
            mongodb_uri = server.uri
            log.info("started embedded SecantusDB on port %d (data in %s)", server.port, cfg.data_dir / "mongo")
        if redis_url is None:
            server = await asyncio.to_thread(_start_embedded, cfg, "redis", start_redis)
            embedded.append(server)
            redis_url = server.uri
            log.info("started embedded Valkey on port %d", server.port)
    except BaseException:
        for server in reversed(embedded):
            server.stop()
        raise
    # Every client from server.connections: write concern, TLS and Sentinel are applied there, in one place.
    store = Store(mongo_client(cfg, mongodb_uri), cfg.mongodb_db)
    redis = redis_client(cfg, redis_url)
    arq = arq_redis(cfg, redis_url)
    try:
        await _reach(arq)
    except BaseException:
        await arq.aclose()
        await redis.aclose()
        await store.close()
        for server in reversed(embedded):
            server.stop()
        raise
    events = EventLog(redis, cfg.event_stream, cfg.event_retention)
    gateway = Gateway(cfg, store, events, SendQueue(arq, cfg.arq_queue), DeliveryStats(redis, stats_prefix(cfg)))
    res = Resources(cfg, store, redis, arq, gateway, embedded)
    try:
        await store.ensure_indexes()
        yield res
    finally:
        await res.close()
