"""Every MongoDB and Redis client the product makes, built from Config in one place.

MongoDB: the URI as given (a replica set's `mongodb://a,b,c/?replicaSet=rs0` included: nothing here forces a
direct connection) plus MONGODB_WRITE_CONCERN. Retryable writes are the URI's business: PyMongo's default
(retryWrites=true) for yours, `retryWrites=false` in the embedded SecantusDB's (server.embedded.mongo_uri); a
keyword here would override either.

Redis: REDIS_URL (redis://, rediss:// for TLS, unix://), REDIS_TLS_CA_FILE and REDIS_TLS_CHECK_HOSTNAME for TLS,
or Redis Sentinel (REDIS_SENTINELS, REDIS_SENTINEL_MASTER, REDIS_SENTINEL_PASSWORD) with REDIS_URL's user,
password, database and scheme. arq's queue connection is built here too (`arq_redis`), not from arq's
RedisSettings: those cannot carry a sentinel password, TLS to the sentinels, or a CA bundle with Sentinel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, TypeVar, cast

import redis
import redis.sentinel
from arq.connections import ArqRedis
from pymongo import AsyncMongoClient
from redis.asyncio import Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from server import store_metrics  # noqa: F401  (its command listener is registered before any client is made)
from server.config import Config, ConfigError
from server.documents import Fields

# MongoDB: how long a call waits for a server to select, and for a connection.
MONGO_TIMEOUT_MS = 3_000
# Redis: the bound on opening a connection, and how often an idle pooled one is PINGed before reuse (a
# connection a failover or a restart cut is then replaced before a command is lost on it). No read timeout on
# the data connections: Subscribe's reader blocks in XREAD (server.hub) longer than any sensible one.
REDIS_CONNECT_TIMEOUT = 3.0
REDIS_HEALTH_CHECK_INTERVAL = 10
# A sentinel answers a lookup at once; a silent one is skipped for the next after this.
SENTINEL_TIMEOUT = 3.0

_R = TypeVar("_R", bound=Redis)


def mongo_client(cfg: Config, uri: str | None = None) -> AsyncMongoClient[Fields]:
    """A client of `uri` (default MONGODB_URI) with MONGODB_WRITE_CONCERN applied; connects lazily.

    The write concern, when set, overrides a `w=` / `wtimeoutMS=` in the URI (keywords win over the URI).
    """
    target = uri if uri is not None else cfg.mongodb_uri
    if target is None:
        raise ConfigError("MONGODB_URI is not set")
    options: dict[str, Any] = {}
    if cfg.mongodb_write_concern is not None:
        options["w"] = cfg.mongodb_write_concern
    if cfg.mongodb_write_concern_timeout_ms is not None:
        options["wtimeoutMS"] = cfg.mongodb_write_concern_timeout_ms
    return AsyncMongoClient(
        target, tz_aware=True, serverSelectionTimeoutMS=MONGO_TIMEOUT_MS, connectTimeoutMS=MONGO_TIMEOUT_MS, **options
    )


def _url(cfg: Config, url: str | None) -> str:
    target = url if url is not None else cfg.redis_url
    if target is None:
        raise ConfigError("REDIS_URL is not set")
    return target


def _is_tls(url: str) -> bool:
    return url.partition("://")[0].lower() == "rediss"


def _tls_options(cfg: Config) -> dict[str, Any]:
    """redis-py's keywords of a verified TLS connection: the server's certificate always checked (against
    REDIS_TLS_CA_FILE, else the system's CAs), its name unless REDIS_TLS_CHECK_HOSTNAME is false."""
    return {
        # A string: redis-py's asyncio TLS context takes only "none", "optional" or "required".
        "ssl_cert_reqs": "required",
        "ssl_ca_certs": cfg.redis_tls_ca_file or None,
        "ssl_check_hostname": cfg.redis_tls_check_hostname,
    }


def _direct_options(cfg: Config, url: str) -> dict[str, Any]:
    """Keywords for a client of `url` itself (no Sentinel); the URL's own query options still win."""
    options: dict[str, Any] = {
        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
        "health_check_interval": REDIS_HEALTH_CHECK_INTERVAL,
    }
    if _is_tls(url):
        options.update(_tls_options(cfg))
    return options


def _sentinel_options(cfg: Config, url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the sentinels' keywords, the master's keywords) for Sentinel mode.

    The master gets REDIS_URL's user, password, database and query options (its host and port are not used: the
    sentinels name the master); the sentinels get REDIS_SENTINEL_PASSWORD. With rediss:// both are spoken to
    over TLS, verified the same way: a deployment that encrypts its data port encrypts its sentinels' too.
    """
    parsed: dict[str, Any] = dict(parse_url(url))
    for key in ("host", "port", "path", "connection_class"):
        parsed.pop(key, None)
    master: dict[str, Any] = {
        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT,
        "health_check_interval": REDIS_HEALTH_CHECK_INTERVAL,
        **parsed,
    }
    sentinel: dict[str, Any] = {"socket_connect_timeout": SENTINEL_TIMEOUT, "socket_timeout": SENTINEL_TIMEOUT}
    if cfg.redis_sentinel_password:
        sentinel["password"] = cfg.redis_sentinel_password
    if _is_tls(url):
        tls = _tls_options(cfg)
        # SentinelConnectionPool picks its TLS connection class from `ssl`; a plain Redis client (a sentinel)
        # from `ssl` as well.
        master.update(ssl=True, **tls)
        sentinel.update(ssl=True, **tls)
    return sentinel, master


class _SentinelPool(SentinelConnectionPool):
    """The master's pool, which on a full disconnect (its client closed) also closes the sentinels' connections:
    redis-py's Sentinel keeps one client per sentinel that nothing else would ever close."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        # inuse_connections=False is the pool's own reset on a new master address: the sentinels stay open then.
        if inuse_connections:
            for client in self.sentinel_manager.sentinels:
                await client.connection_pool.disconnect()


def _client(cls: type[_R], cfg: Config, url: str | None) -> _R:
    target = _url(cfg, url)
    if cfg.redis_sentinels:
        sentinel_kwargs, master_kwargs = _sentinel_options(cfg, target)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves Sentinel untyped
            list(cfg.redis_sentinels), sentinel_kwargs=sentinel_kwargs, **master_kwargs
        )
        # Each new connection asks the sentinels for the master first, so a client made after a failover, and a
        # pooled connection remade after one (a write to a demoted master reconnects), reach the new master.
        master = sentinel.master_for(cfg.redis_sentinel_master, redis_class=cls, connection_pool_class=_SentinelPool)
        return cast(_R, master)
    return cast(_R, cls.from_url(target, **_direct_options(cfg, target)))


def redis_client(cfg: Config, url: str | None = None) -> Redis:
    """The process's Redis client (event log, Subscribe's reader, quotas, stats, pacing); connects lazily.

    Reaches REDIS_URL, or the master the sentinels name; `url` replaces REDIS_URL for an embedded Valkey the
    process started itself (Config.from_env allows Sentinel only with REDIS_URL set). Close it with `aclose()`.
    """
    return _client(Redis, cfg, url)


def arq_redis(cfg: Config, url: str | None = None) -> ArqRedis:
    """arq's connection (enqueueing, and the worker's `redis_pool`) to the same Redis as `redis_client`, with
    SMS_ARQ_QUEUE as its default queue; connects lazily."""
    client = _client(ArqRedis, cfg, url)
    client.default_queue_name = cfg.arq_queue
    return client


@contextlib.contextmanager
def sync_redis(cfg: Config | None, url: str, timeout: float) -> Iterator[redis.Redis]:
    """A blocking client for a short check (devstack's probes), every command bounded by `timeout`, closed on exit.

    Without `cfg` (a Redis the caller started itself) `url` is used as it is; with it, as `redis_client` would.
    """
    timeouts = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if cfg is not None and cfg.redis_sentinels:
        sentinel_kwargs, master_kwargs = _sentinel_options(cfg, url)
        master_kwargs.pop("health_check_interval", None)
        sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]  # untyped in redis-py
            list(cfg.redis_sentinels), sentinel_kwargs={**sentinel_kwargs, **timeouts}, **{**master_kwargs, **timeouts}
        )
        client = cast(redis.Redis, sentinel.master_for(cfg.redis_sentinel_master))  # type: ignore[no-untyped-call]
        try:
            yield client
        finally:
            client.close()
            for each in sentinel.sentinels:
                each.close()
        return
    options = _direct_options(cfg, url) if cfg is not None else {}
    options.pop("health_check_interval", None)
    client = redis.Redis.from_url(url, **{**options, **timeouts})
    try:
        yield client
    finally:
        client.close()
