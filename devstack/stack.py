"""`sms-gateway dev`: the whole stack on one machine, as supervised children with prefixed logs."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack.envoy import EnvoyPorts, dist_fingerprint, envoy_command, origin_problems, render
from devstack.probes import forget_worker_heartbeat, grpc_check, http_check, redis_check, tcp_check, worker_check
from devstack.supervisor import Child, ChildSpec, Console, HealthCheck, StackFailed, StopRequested, Supervisor
from server.auth import mint_token
from server.config import Config, ConfigError, split_addr
from server.embedded import free_port, mongo_command, mongo_uri, redis_command
from server.webhook_routes import INBOUND_PATH, STATUS_PATH

SMS_GATEWAY = [sys.executable, "-m", "server.cli"]

DEMO_USERS: tuple[tuple[str, str], ...] = (("admin", "admin"), ("alice", "agent"), ("bob", "agent"))
DEMO_TOKEN_TTL = 7 * 24 * 3600
DEFAULT_FROM_NUMBER = "+15005550006"
# The server drains in-flight calls on SIGTERM; an open Subscribe would hold Ctrl-C for the full default.
DEV_DRAIN_SECONDS = "3"
# The processes that serve Prometheus metrics, each on a port of its own (SMS_METRICS_ADDR).
METRICS_PROCESSES = ("server", "worker", "bridge")
# `--replicas`: copies of each of METRICS_PROCESSES. A few per core is already more than loopback can show.
MAX_REPLICAS = 8
# Replicas listen here on free ports; the configured addresses are Envoy's, the stack's entry points.
REPLICA_HOST = "127.0.0.1"


def replica_names(kind: str, replicas: int) -> list[str]:
    """The child names of `kind`'s copies: just `kind` for one (as before replicas existed), else kind-1..kind-N."""
    return [kind] if replicas == 1 else [f"{kind}-{i}" for i in range(1, replicas + 1)]


def check_replicas(replicas: int) -> None:
    """Raises ConfigError unless 1 <= replicas <= MAX_REPLICAS."""
    if not 1 <= replicas <= MAX_REPLICAS:
        raise ConfigError(f"--replicas must be between 1 and {MAX_REPLICAS}, got {replicas}")


@dataclass
class Settings:
    """Everything the stack decided: addresses, ports, stores, credentials."""

    data_dir: Path
    # Where the built web UI is looked for, made absolute once: Envoy serves files by absolute path.
    web_dist: Path
    grpc_addr: str
    bridge_addr: str
    simulator_addr: str
    web_addr: str
    # SMS_WEB_ORIGINS: besides the web address itself, the origins whose pages may call the API (CORS).
    web_origins: tuple[str, ...]
    admin_port: int
    mongo_port: int | None
    redis_port: int | None
    mongodb_uri: str
    mongodb_db: str
    redis_url: str
    jwt_secret: str = field(repr=False)
    # Signs only the bridge's `ingest` tokens; the bridge gets this and not jwt_secret.
    ingest_secret: str = field(repr=False)
    simulated_twilio: bool
    twilio_account_sid: str
    twilio_auth_token: str = field(repr=False)
    twilio_from_number: str
    twilio_api_base_url: str | None
    public_base_url: str
    # Per child serving metrics (a name of replica_names for each of METRICS_PROCESSES): its SMS_METRICS_ADDR.
    metrics_addrs: dict[str, str] = field(default_factory=dict)
    replicas: int = 1
    # With replicas > 1: each server's and each bridge's own address, by child name. grpc_addr and bridge_addr are
    # then Envoy's listeners, which balance over these.
    server_addrs: dict[str, str] = field(default_factory=dict)
    bridge_addrs: dict[str, str] = field(default_factory=dict)

    @property
    def envoy_config(self) -> Path:
        return self.data_dir / "envoy.yaml"

    @property
    def info_path(self) -> Path:
        return self.data_dir / "dev.json"


def _url(addr: str) -> str:
    host, port = split_addr(addr)
    return f"http://{host}:{port}"


def load_secrets(data_dir: Path) -> dict[str, str]:
    """The stack's generated secrets, created once and kept in the data dir so tokens survive restarts."""
    path = data_dir / "secrets.json"
    stored: dict[str, str] = {}
    if path.exists():
        with contextlib.suppress(ValueError, OSError):
            loaded = json.loads(path.read_text())
            if isinstance(loaded, dict):
                stored = {str(k): str(v) for k, v in loaded.items()}
    wanted: dict[str, Callable[[], str]] = {
        "jwt_secret": lambda: secrets.token_urlsafe(48),
        "ingest_secret": lambda: secrets.token_urlsafe(48),
        "twilio_account_sid": lambda: "AC" + secrets.token_hex(16),
        "twilio_auth_token": lambda: secrets.token_hex(16),
    }
    missing = {name: make() for name, make in wanted.items() if not stored.get(name)}
    if missing:
        stored.update(missing)
        write_private_json(path, stored)
    return stored


def write_private_json(path: Path, data: Any) -> None:
    """Writes JSON readable by the owner only, atomically (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _replica_addrs(kind: str, replicas: int) -> dict[str, str]:
    if replicas == 1:
        return {}
    return {name: f"{REPLICA_HOST}:{free_port()}" for name in replica_names(kind, replicas)}


def decide(cfg: Config, env: dict[str, str], replicas: int = 1) -> Settings:
    """Turns the Config (and which settings the user really set) into the stack's settings."""
    check_replicas(replicas)
    data_dir = cfg.data_dir.resolve()
    stored = load_secrets(data_dir)
    simulated = not (cfg.twilio_account_sid and cfg.twilio_auth_token)
    mongo_port = None if cfg.mongodb_uri else free_port()
    redis_port = None if cfg.redis_url else free_port()
    # With replicas this is Envoy's webhook listener, which Twilio (the simulator) posts to.
    bridge_url = _url(cfg.bridge_addr)
    if simulated:
        # The simulator signs its callbacks for the URL it posts to, so the bridge must check against the same.
        public_base_url = bridge_url
    else:
        public_base_url = env.get("SMS_PUBLIC_BASE_URL", "").rstrip("/") or bridge_url
    return Settings(
        data_dir=data_dir,
        web_dist=cfg.web_dist.resolve(),
        grpc_addr=cfg.grpc_addr,
        bridge_addr=cfg.bridge_addr,
        simulator_addr=cfg.simulator_addr,
        web_addr=cfg.web_addr,
        web_origins=cfg.web_origins,
        admin_port=free_port(),
        mongo_port=mongo_port,
        redis_port=redis_port,
        mongodb_uri=cfg.mongodb_uri or mongo_uri(mongo_port or 0),
        mongodb_db=cfg.mongodb_db,
        redis_url=cfg.redis_url or f"redis://127.0.0.1:{redis_port}/0",
        jwt_secret=cfg.jwt_secret or stored["jwt_secret"],
        ingest_secret=cfg.ingest_secret or stored["ingest_secret"],
        simulated_twilio=simulated,
        twilio_account_sid=stored["twilio_account_sid"] if simulated else cfg.twilio_account_sid,
        twilio_auth_token=stored["twilio_auth_token"] if simulated else cfg.twilio_auth_token,
        twilio_from_number=cfg.twilio_from_number
        or (DEFAULT_FROM_NUMBER if not cfg.twilio_messaging_service_sid else ""),
        twilio_api_base_url=_url(cfg.simulator_addr) if simulated else cfg.twilio_api_base_url,
        public_base_url=public_base_url,
        metrics_addrs={
            name: f"127.0.0.1:{free_port()}" for kind in METRICS_PROCESSES for name in replica_names(kind, replicas)
        },
        replicas=replicas,
        server_addrs=_replica_addrs("server", replicas),
        bridge_addrs=_replica_addrs("bridge", replicas),
    )


def child_env(s: Settings, env: dict[str, str]) -> dict[str, str]:
    """The environment every child gets: the caller's, with the stack's settings on top."""
    out = dict(env)
    out.update(
        PYTHONUNBUFFERED="1",
        SMS_DATA_DIR=str(s.data_dir),
        MONGODB_URI=s.mongodb_uri,
        MONGODB_DB=s.mongodb_db,
        REDIS_URL=s.redis_url,
        SMS_JWT_SECRET=s.jwt_secret,
        SMS_INGEST_SECRET=s.ingest_secret,
        TWILIO_ACCOUNT_SID=s.twilio_account_sid,
        TWILIO_AUTH_TOKEN=s.twilio_auth_token,
        TWILIO_FROM_NUMBER=s.twilio_from_number,
        SMS_PUBLIC_BASE_URL=s.public_base_url,
        SMS_GRPC_ADDR=s.grpc_addr,
        SMS_GRPC_TARGET=s.grpc_addr,
        SMS_BRIDGE_ADDR=s.bridge_addr,
        SMS_SIMULATOR_ADDR=s.simulator_addr,
        SMS_WEB_ADDR=s.web_addr,
    )
    if s.twilio_api_base_url:
        out["TWILIO_API_BASE_URL"] = s.twilio_api_base_url
    else:
        out.pop("TWILIO_API_BASE_URL", None)
    out.setdefault("SMS_DRAIN_SECONDS", DEV_DRAIN_SECONDS)
    # Each process that serves metrics gets a port of its own (_metered); one address for all could not bind.
    out.pop("SMS_METRICS_ADDR", None)
    return out


def _without(env: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in names}


def _metered(s: Settings, name: str, env: dict[str, str]) -> dict[str, str]:
    """`env` with `name`'s own SMS_METRICS_ADDR (none for a process that serves no metrics)."""
    out = _without(env, "SMS_METRICS_ADDR")
    if name in s.metrics_addrs:
        out["SMS_METRICS_ADDR"] = s.metrics_addrs[name]
    return out


def _all(*checks: HealthCheck) -> HealthCheck:
    """Healthy when every check passes (in order, stopping at the first that does not)."""
    return lambda: all(check() for check in checks)


def _server_specs(s: Settings, cenv: dict[str, str]) -> list[ChildSpec]:
    specs = []
    for name in replica_names("server", s.replicas):
        addr = s.server_addrs.get(name, s.grpc_addr)
        env = {**_metered(s, name, cenv), "SMS_GRPC_ADDR": addr}
        specs.append(
            ChildSpec(
                name,
                [*SMS_GATEWAY, "server"],
                env,
                grpc_check(addr),
                stop_timeout=float(cenv["SMS_DRAIN_SECONDS"] or 0) + 5,
            )
        )
    return specs


def _worker_specs(cfg: Config, s: Settings, bare: dict[str, str]) -> list[ChildSpec]:
    heartbeat = worker_check(s.redis_url, cfg.arq_queue, cfg)
    if s.replicas == 1:
        return [
            ChildSpec(
                "worker",
                [*SMS_GATEWAY, "worker"],
                _metered(s, "worker", bare),
                heartbeat,
                start_timeout=20,
                required=False,
                settle=1.0,
                prepare=lambda: forget_worker_heartbeat(s.redis_url, cfg.arq_queue, cfg),
            )
        ]
    # arq's heartbeat key is one per queue, kept by every worker on it: it cannot tell which one is up, and
    # deleting it before a restart would only blind the others. Each copy's own metrics port (served from start-up)
    # shows that it runs; the key, that the queue is worked.
    return [
        ChildSpec(
            name,
            [*SMS_GATEWAY, "worker"],
            _metered(s, name, bare),
            _all(http_check(_url(s.metrics_addrs[name]) + "/metrics"), heartbeat),
            start_timeout=20,
            required=False,
            settle=1.0,
        )
        for name in replica_names("worker", s.replicas)
    ]


def _bridge_specs(s: Settings, cenv: dict[str, str]) -> list[ChildSpec]:
    # The bridge holds only its ingest key: taken over, it could not mint user or admin tokens.
    base = _without(cenv, "SMS_JWT_SECRET")
    specs = []
    for name in replica_names("bridge", s.replicas):
        addr = s.bridge_addrs.get(name, s.bridge_addr)
        # Its ingest calls go to SMS_GRPC_TARGET: with replicas, Envoy's gRPC listener, which picks a live server.
        env = {**_metered(s, name, base), "SMS_BRIDGE_ADDR": addr}
        specs.append(ChildSpec(name, [*SMS_GATEWAY, "bridge"], env, http_check(_url(addr) + "/healthz")))
    return specs


def envoy_ports(s: Settings) -> EnvoyPorts:
    """What Envoy listens on and balances over."""
    return EnvoyPorts(
        s.web_addr,
        s.grpc_addr,
        s.admin_port,
        grpc_replicas=tuple(s.server_addrs.values()),
        bridge_addr=s.bridge_addr if s.bridge_addrs else "",
        bridge_replicas=tuple(s.bridge_addrs.values()),
    )


def child_specs(cfg: Config, s: Settings, env: dict[str, str], console: Console) -> list[ChildSpec]:
    """The children in start order; each depends only on those before it."""
    cenv = child_env(s, env)
    # Each child gets only the secrets it uses: the server both keys, the bridge its ingest key, the rest none.
    bare = _without(cenv, "SMS_JWT_SECRET", "SMS_INGEST_SECRET")
    specs: list[ChildSpec] = []
    if s.mongo_port is not None:
        storage = s.data_dir / "mongo"
        storage.mkdir(parents=True, exist_ok=True)
        specs.append(
            ChildSpec("mongo", mongo_command(storage, s.mongo_port), bare, tcp_check(f"127.0.0.1:{s.mongo_port}"))
        )
    if s.redis_port is not None:
        (s.data_dir / "redis").mkdir(parents=True, exist_ok=True)
        # Valkey's notice-level start-up banner drowns the other children's lines; warnings still show.
        argv = [*redis_command(s.data_dir / "redis", s.redis_port), "--loglevel", "warning"]
        specs.append(ChildSpec("redis", argv, bare, redis_check(s.redis_url), start_timeout=30))
    specs.extend(_server_specs(s, cenv))
    if s.simulated_twilio:
        specs.append(
            ChildSpec(
                "simulator", [*SMS_GATEWAY, "twilio-simulator"], bare, http_check(_url(s.simulator_addr) + "/healthz")
            )
        )
    specs.extend(_worker_specs(cfg, s, bare))

    def render_envoy() -> None:
        render(envoy_ports(s), s.envoy_config, s.web_dist, s.web_origins)

    if not s.web_dist.is_dir():
        console.say(
            f"note: {cfg.web_dist} does not exist, so the web UI is not served "
            "(./dev.sh builds it, or: npm --prefix clients/web run build; it is served once built)"
        )
    envoy = ChildSpec(
        "envoy",
        envoy_command(s.envoy_config),
        bare,
        http_check(f"http://127.0.0.1:{s.admin_port}/ready"),
        prepare=render_envoy,
    )
    if s.replicas == 1:
        specs.extend([*_bridge_specs(s, cenv), envoy])
    else:
        # The bridges are healthy only once their ingest target, Envoy's gRPC listener, answers SERVING.
        specs.extend([envoy, *_bridge_specs(s, cenv)])
    return specs


def stack_info(s: Settings, sup: Supervisor) -> dict[str, Any]:
    """What dev.json holds: every address, port and credential a script or test needs."""
    tokens = {user: mint_token(s.jwt_secret, user, role, ttl_seconds=DEMO_TOKEN_TTL) for user, role in DEMO_USERS}
    return {
        "pid": os.getpid(),
        "data_dir": str(s.data_dir),
        "urls": {
            "web": _url(s.web_addr) + "/",
            "grpc": s.grpc_addr,
            "bridge": _url(s.bridge_addr),
            "simulator": _url(s.simulator_addr) if s.simulated_twilio else None,
            "envoy_admin": f"http://127.0.0.1:{s.admin_port}",
            "public_base_url": s.public_base_url,
        },
        "ports": {
            "web": split_addr(s.web_addr)[1],
            "grpc": split_addr(s.grpc_addr)[1],
            "bridge": split_addr(s.bridge_addr)[1],
            "simulator": split_addr(s.simulator_addr)[1] if s.simulated_twilio else None,
            "envoy_admin": s.admin_port,
            "mongo": s.mongo_port,
            "redis": s.redis_port,
        },
        # Prometheus text of each process that serves it, by process.
        "metrics": {name: _url(addr) + "/metrics" for name, addr in s.metrics_addrs.items()},
        "replicas": replicas_info(s),
        "mongodb_uri": s.mongodb_uri,
        "mongodb_db": s.mongodb_db,
        "redis_url": s.redis_url,
        "jwt_secret": s.jwt_secret,
        "twilio": {
            "simulated": s.simulated_twilio,
            "account_sid": s.twilio_account_sid,
            # The simulator's token is a local test credential; a real account's token stays in the environment.
            "auth_token": s.twilio_auth_token if s.simulated_twilio else None,
            "from_number": s.twilio_from_number,
            "api_base_url": s.twilio_api_base_url,
        },
        "web_ui_built": s.web_dist.is_dir(),
        "users": dict(DEMO_USERS),
        "tokens": tokens,
        "pids": {child.name: child.pid for child in sup.children},
    }


def replicas_info(s: Settings) -> dict[str, Any]:
    """Each copy by child name: a server's gRPC target, a bridge's base URL, a worker's metrics URL (its pid is in
    `pids`, rewritten at every restart, so a script can kill one and watch it come back)."""
    servers = {name: s.server_addrs.get(name, s.grpc_addr) for name in replica_names("server", s.replicas)}
    bridges = {name: _url(s.bridge_addrs.get(name, s.bridge_addr)) for name in replica_names("bridge", s.replicas)}
    workers = {name: _url(s.metrics_addrs[name]) + "/metrics" for name in replica_names("worker", s.replicas)}
    return {"count": s.replicas, "server": servers, "bridge": bridges, "worker": workers}


def _replica_lines(info: dict[str, Any]) -> list[str]:
    replicas = info.get("replicas", {})
    if replicas.get("count", 1) == 1:
        return []
    pids = info["pids"]
    lines = [f"  replicas   {replicas['count']} of each, balanced by Envoy on the gRPC and bridge addresses above:"]
    for kind in ("server", "worker", "bridge"):
        for name, where in replicas[kind].items():
            lines.append(f"    {name:<9} {where}   (pid {pids.get(name)})")
    return lines


def banner(info: dict[str, Any]) -> str:
    """The summary printed once everything is healthy (no secrets beyond the demo tokens)."""
    urls = info["urls"]
    lines = [
        "sms-gateway dev is up",
        f"  web UI     {urls['web']}" + ("" if info["web_ui_built"] else "   (not built: ./dev.sh builds it)"),
        f'  gRPC       {urls["grpc"]}   (grpcurl -plaintext -H "authorization: Bearer $TOKEN" {urls["grpc"]} list)',
        f"  bridge     {urls['bridge']}   (Twilio webhooks: {INBOUND_PATH}, {STATUS_PATH})",
    ]
    if urls["simulator"]:
        lines.append(f"  simulator  {urls['simulator']}   (account {info['twilio']['account_sid']})")
    else:
        lines.append(
            f"  Twilio     real account {info['twilio']['account_sid']}; webhooks must reach {urls['public_base_url']}"
        )
    lines.append(f"  from       {info['twilio']['from_number'] or '(messaging service)'}")
    lines.extend(_replica_lines(info))
    if info["metrics"]:
        lines.append("  metrics    " + ", ".join(f"{name} {url}" for name, url in info["metrics"].items()))
    lines.append(f"  tokens, valid {DEMO_TOKEN_TTL // 86400} days:")
    for user, role in info["users"].items():
        lines.append(f"    {user:<6} ({role}) {info['tokens'][user]}")
    lines.append(
        f"  data in {info['data_dir']}; ports and credentials for scripts in {Path(info['data_dir']) / 'dev.json'}"
    )
    lines.append("  Ctrl-C stops everything.")
    return "\n".join(lines)


def _port_in_use(addr: str) -> bool:
    host, port = split_addr(addr)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def preflight(s: Settings) -> list[str]:
    """Problems that would only surface later as a crash loop: ports already taken, SMS_WEB_ORIGINS not origins."""
    addrs = [("SMS_GRPC_ADDR", s.grpc_addr), ("SMS_BRIDGE_ADDR", s.bridge_addr), ("SMS_WEB_ADDR", s.web_addr)]
    if s.simulated_twilio:
        addrs.append(("SMS_SIMULATOR_ADDR", s.simulator_addr))
    problems = []
    seen: dict[str, str] = {}
    for name, addr in addrs:
        if addr in seen:
            problems.append(f"{name} and {seen[addr]} are both {addr}")
        seen[addr] = name
        if _port_in_use(addr):
            problems.append(f"{addr} ({name}) is already in use: another stack running? set {name} to a free port")
    problems.extend(origin_problems(s.web_origins))
    return problems


def run(cfg: Config, replicas: int = 1) -> int:
    """Runs the stack (with `replicas` copies of the server, the worker and the bridge) until Ctrl-C or SIGTERM
    (exit 0), or until it cannot run (exit 1); ConfigError for a replica count out of bounds."""
    check_replicas(replicas)
    console = Console()
    env = dict(os.environ)
    data_dir = cfg.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # It holds the generated secrets, dev.json (tokens) and the databases: its user's alone, even if made earlier.
    data_dir.chmod(0o700)
    # One stack per data dir: two SecantusDB or Valkey processes on the same files would corrupt them.
    lock = open(data_dir / "dev.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        console.alert(f"!!! another `sms-gateway dev` is running with the data dir {data_dir}")
        lock.close()
        return 1
    try:
        return _run_locked(cfg, env, console, replicas)
    finally:
        lock.close()


def _run_locked(cfg: Config, env: dict[str, str], console: Console, replicas: int) -> int:
    s = decide(cfg, env, replicas)
    problems = preflight(s)
    if problems:
        for problem in problems:
            console.alert(f"!!! {problem}")
        return 1
    info: dict[str, Any] = {}

    def write_info(_child: Child | None = None) -> None:
        if info:
            info["pids"] = {child.name: child.pid for child in sup.children}
            info["web_ui_built"] = s.web_dist.is_dir()
            write_private_json(s.info_path, info)

    sup = Supervisor(console, on_restart=write_info)
    s.info_path.unlink(missing_ok=True)
    with sup.handling_signals():
        try:
            if not s.simulated_twilio:
                console.say("real Twilio credentials are set: not starting the simulator")
            for name, value in (("MONGODB_URI", cfg.mongodb_uri), ("REDIS_URL", cfg.redis_url)):
                if value:
                    console.say(f"{name} is set: using it instead of the embedded server")
            for spec in child_specs(cfg, s, env, console):
                sup.start(spec)
            info.update(stack_info(s, sup))
            write_info()
            console.say(banner(info))
            sup.run_until_stopped(every=ui_watcher(sup, console, s.web_dist))
            code = 0
        except StopRequested:
            code = 0
        except StackFailed as exc:
            console.alert(f"!!! {exc}; stopping the stack")
            code = 1
        finally:
            s.info_path.unlink(missing_ok=True)
            sup.stop_all()
    console.say("stopped" if code == 0 else "stopped after a failure")
    return code


def ui_watcher(sup: Supervisor, console: Console, dist: Path) -> Callable[[], None]:
    """Restarts Envoy (which re-renders its routes) when the UI build changes, once the build has settled."""
    served = dist_fingerprint(dist)
    last_seen = served

    def check() -> None:
        nonlocal served, last_seen
        now = dist_fingerprint(dist)
        # A build rewrites many files over a few hundred ms: act only on two equal looks in a row.
        if now == last_seen and now != served:
            served = now
            console.say("the web UI build changed: restarting envoy to serve it")
            sup.restart("envoy")
        last_seen = now

    return check
