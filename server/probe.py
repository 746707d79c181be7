"""`sms-gateway probe [server|worker|bridge]`: the health check of one running process, for a container's HEALTHCHECK.

Run inside the process's own container (or beside it), with the process's own settings, so it finds the process
where the process listens: a wildcard listen address (0.0.0.0, ::) is probed on 127.0.0.1. Exit status 0 when
healthy, 1 otherwise (Docker reserves 2), with one line saying what was seen.

- server: grpc.health.v1 `Check` of the whole server on SMS_GRPC_ADDR answers SERVING (NOT_SERVING while MongoDB or
  Redis does not answer, and from the first moment of a graceful stop).
- bridge: GET /healthz on SMS_BRIDGE_ADDR answers 200 (the bridge answers 503 while its gRPC server is not SERVING).
- worker: arq's heartbeat key (`<SMS_ARQ_QUEUE>:health-check`, refreshed every SMS_HEALTH_CHECK_INTERVAL_SECONDS with
  a TTL one second longer) exists in Redis (REDIS_URL, or the master REDIS_SENTINELS name), and, when SMS_METRICS_ADDR
  is set, this process's metrics answer. arq's key is one per queue, not per worker: it says that some worker on the
  queue is looping, and the metrics port says that this one is alive.

`--live` asks only whether the process answers at all (a liveness probe: restart it if not), not whether it can do
its work (readiness): a server answering NOT_SERVING and a bridge answering 503 are alive.

`auto` (the default) finds the process from PID 1's command line (`sms-gateway server`, also behind an init such as
`docker-init --`), so one HEALTHCHECK serves every container of the image.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from server.config import Config, ConfigError, split_addr

PROCESSES = ("server", "worker", "bridge")
AUTO = "auto"
DEFAULT_TIMEOUT = 3.0
PID1_CMDLINE = Path("/proc/1/cmdline")
# arq's suffix (arq.constants.health_check_key_suffix), spelled out so the probe does not import arq.
HEALTH_CHECK_KEY_SUFFIX = ":health-check"
DESCRIPTION = "check the health of a running server, worker or bridge (a container's HEALTHCHECK)"
HEALTHY = 0
UNHEALTHY = 1


@dataclass(frozen=True)
class Verdict:
    """What a probe saw: healthy or not, and one line saying why."""

    healthy: bool
    detail: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The probe's arguments, on the `probe` subcommand's parser (or a parser of its own: `main`)."""
    parser.add_argument(
        "process",
        nargs="?",
        default=AUTO,
        choices=(AUTO, *PROCESSES),
        help="the process to check (default: the one PID 1 runs, from /proc/1/cmdline)",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="liveness only: healthy while the process answers at all (NOT_SERVING and 503 included)",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help=f"seconds per check (default {DEFAULT_TIMEOUT:g})"
    )
    parser.add_argument("--key", default="", help="worker: the heartbeat key (default: <SMS_ARQ_QUEUE>:health-check)")


def local_target(addr: str, setting: str) -> tuple[str, int]:
    """(host, port) to reach a process listening on `addr` from its own host: wildcards become 127.0.0.1."""
    host, port = split_addr(addr, setting)
    try:
        if ipaddress.ip_address(host).is_unspecified:
            host = "127.0.0.1"
    except ValueError:
        pass  # a name: reachable as it is
    return host, port


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def detect_process(cmdline: Path = PID1_CMDLINE) -> str | None:
    """Which of PROCESSES the command line in `cmdline` runs (its first argument naming one), or None."""
    try:
        args = cmdline.read_bytes().split(b"\0")
    except OSError:
        return None
    for arg in args[1:]:
        name = arg.decode(errors="replace")
        if name in PROCESSES:
            return name
    return None


def check_server(cfg: Config, timeout: float, live: bool = False) -> Verdict:
    """grpc.health.v1 Check on SMS_GRPC_ADDR: SERVING (or, `live`, any answer)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = _hostport(*local_target(cfg.grpc_addr, "SMS_GRPC_ADDR"))
    with grpc.insecure_channel(target) as channel:
        try:
            resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            return Verdict(False, f"gRPC health at {target}: {code.name if code else exc}")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    serving = resp.status == health_pb2.HealthCheckResponse.SERVING
    return Verdict(serving or live, f"gRPC health at {target}: {status}")


def _http_status(url: str, timeout: float) -> int | str:
    """The HTTP status `url` answers GET with, or why there was none."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return f"no answer ({reason})"


def check_bridge(cfg: Config, timeout: float, live: bool = False) -> Verdict:
    """GET /healthz on SMS_BRIDGE_ADDR: 200 (or, `live`, any HTTP answer)."""
    url = f"http://{_hostport(*local_target(cfg.bridge_addr, 'SMS_BRIDGE_ADDR'))}/healthz"
    status = _http_status(url, timeout)
    healthy = status == 200 or (live and isinstance(status, int))
    return Verdict(healthy, f"{url}: {status}")


def worker_key(cfg: Config, key: str = "") -> str:
    """The heartbeat key the arq worker on SMS_ARQ_QUEUE refreshes (unless `key` names another)."""
    return key or cfg.arq_queue + HEALTH_CHECK_KEY_SUFFIX


def check_worker(cfg: Config, timeout: float, live: bool = False, key: str = "") -> Verdict:
    """The metrics port answers (when SMS_METRICS_ADDR is set) and, unless `live`, the heartbeat key exists."""
    seen: list[str] = []
    if cfg.metrics_addr:
        url = f"http://{_hostport(*local_target(cfg.metrics_addr, 'SMS_METRICS_ADDR'))}/metrics"
        status = _http_status(url, timeout)
        seen.append(f"{url}: {status}")
        if status != 200:
            return Verdict(False, "; ".join(seen))
    elif live:
        return Verdict(False, "SMS_METRICS_ADDR is not set: nothing of this process to ask")
    if live:
        return Verdict(True, "; ".join(seen))
    if not cfg.redis_url:
        return Verdict(False, "REDIS_URL is not set: cannot read the worker's heartbeat")
    import redis

    from server.connections import sync_redis

    name = worker_key(cfg, key)
    try:
        # As the worker connects: REDIS_URL, or the master REDIS_SENTINELS name; TLS settings applied.
        with sync_redis(cfg, cfg.redis_url, timeout) as client:
            present = bool(client.exists(name))
    except redis.RedisError as exc:
        return Verdict(False, "; ".join([*seen, f"Redis: {type(exc).__name__}: {exc}"]))
    seen.append(f"heartbeat {name}: {'present' if present else 'missing'}")
    return Verdict(present, "; ".join(seen))


CHECKS: dict[str, Callable[[Config, argparse.Namespace], Verdict]] = {
    "server": lambda cfg, args: check_server(cfg, args.timeout, args.live),
    "bridge": lambda cfg, args: check_bridge(cfg, args.timeout, args.live),
    "worker": lambda cfg, args: check_worker(cfg, args.timeout, args.live, args.key),
}


def run(cfg: Config, args: argparse.Namespace, cmdline: Path = PID1_CMDLINE) -> int:
    """Checks the process `args.process` (or the one PID 1 runs); prints what it saw; 0 if healthy, else 1."""
    process: str | None = args.process
    if process in (None, AUTO):
        process = detect_process(cmdline)
        if process is None:
            print(f"probe: cannot tell which process runs here: name one of {', '.join(PROCESSES)}")
            return UNHEALTHY
    try:
        verdict = CHECKS[process](cfg, args)
    except ConfigError as exc:
        verdict = Verdict(False, str(exc))
    print(f"{process} {'healthy' if verdict.healthy else 'UNHEALTHY'}: {verdict.detail}")
    return HEALTHY if verdict.healthy else UNHEALTHY


def main(argv: list[str] | None = None) -> int:
    """`python -m server.probe`: the same check without the `sms-gateway` command (a settings error is unhealthy)."""
    parser = argparse.ArgumentParser(prog="python -m server.probe", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cfg = Config.from_env()
    except ConfigError as exc:
        print(f"probe: {exc}")
        return UNHEALTHY
    return run(cfg, args)


if __name__ == "__main__":
    sys.exit(main())
