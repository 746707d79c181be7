"""Starting the project's processes (and stand-ins) and returning once they are ready to be used."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from redis.asyncio import Redis

from server.embedded import free_port
from tests.support.polling import eventually_async
from tests.support.processes import LOG_DIR, SMS_GATEWAY, ChildProcess
from tests.support.readiness import wait_health, wait_listening


def _start(
    name: str, args: list[str], env: Mapping[str, str], log_dir: Path, ready: Callable[[ChildProcess], None]
) -> ChildProcess:
    proc = ChildProcess(name, args, env, log_dir)
    with proc.log_on_error(stop=True):
        ready(proc)
    return proc


def start_listening(
    name: str,
    args: list[str],
    env: Mapping[str, str],
    host: str,
    port: int,
    *,
    within: float = 30.0,
    log_dir: Path = LOG_DIR,
) -> ChildProcess:
    """Starts `args` and returns once it accepts connections on host:port (stopped again if it never does)."""
    return _start(name, args, env, log_dir, lambda proc: wait_listening(host, port, within, proc))


def start_grpc(
    name: str, args: list[str], env: Mapping[str, str], target: str, *, within: float = 30.0, log_dir: Path = LOG_DIR
) -> ChildProcess:
    """Starts `args` and returns once the gRPC server at `target` is SERVING (stopped again if it never is)."""
    return _start(name, args, env, log_dir, lambda proc: wait_health(target, within=within, proc=proc))


def start_server(
    env: Mapping[str, str], port: int = 0, *, name: str = "server", within: float = 30.0, log_dir: Path = LOG_DIR
) -> tuple[ChildProcess, str]:
    """Starts `sms-gateway server` on `port` (a free one by default); returns it and its address once SERVING."""
    addr = f"127.0.0.1:{port or free_port()}"
    proc = start_grpc(
        name, [*SMS_GATEWAY, "server"], {**env, "SMS_GRPC_ADDR": addr}, addr, within=within, log_dir=log_dir
    )
    return proc, addr


async def start_worker(
    env: Mapping[str, str], redis: Redis, *, within: float = 20.0, log_dir: Path = LOG_DIR
) -> ChildProcess:
    """Starts `sms-gateway worker` and returns once arq's health-check key for its queue is there."""
    key = env["SMS_ARQ_QUEUE"] + ":health-check"
    await redis.delete(key)  # a key left by an earlier worker would say nothing about this one
    proc = ChildProcess("worker", [*SMS_GATEWAY, "worker"], env, log_dir)

    async def healthy() -> int:
        proc.check_alive()
        return int(await redis.exists(key))

    with proc.log_on_error(stop=True):
        await eventually_async(healthy, within, "the worker's health check")
    return proc
