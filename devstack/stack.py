"""`sms-gateway dev`: the whole stack on one machine as supervised child processes with prefixed logs."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, TextIO

from devstack.envoy import DIST_DIR, EnvoyPorts, dist_fingerprint, envoy_command, render
from server.auth import mint_token
from server.config import Config, split_addr
from server.embedded import free_port, mongo_command, mongo_uri, redis_command

ROOT = Path(__file__).resolve().parent.parent
SMS_GATEWAY = [sys.executable, "-m", "server.cli"]

DEMO_USERS: tuple[tuple[str, str], ...] = (("admin", "admin"), ("alice", "agent"), ("bob", "agent"))
DEMO_TOKEN_TTL = 7 * 24 * 3600
DEFAULT_FROM_NUMBER = "+15005550006"
# The server drains in-flight calls on SIGTERM; an open Subscribe would hold Ctrl-C for the full default.
DEV_DRAIN_SECONDS = "3"

MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
LOG_TAIL_LINES = 40
REPORT_LINES = 20

HealthCheck = Callable[[], bool]

_COLOURS = ("36", "33", "32", "35", "34", "96", "93", "92", "95", "94")
PR_SET_PDEATHSIG = 1


class StackFailed(Exception):
    """The stack cannot run: a child would not come up or kept dying."""


class StopRequested(Exception):
    """Ctrl-C or SIGTERM arrived while starting."""


class Console:
    """Serialises output lines from every child and the supervisor, one prefix and colour per source."""

    def __init__(self, stream: TextIO | None = None, colour: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        if colour is None:
            colour = self.stream.isatty() and not os.environ.get("NO_COLOR")
        self.colour = colour
        self.width = 9
        # Re-entrant: the signal handler writes from the main thread, possibly in the middle of a write.
        self._lock = threading.RLock()

    def _write(self, text: str) -> None:
        with self._lock:
            try:
                self.stream.write(text)
                self.stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken stdout must not take the supervisor down

    def _prefix(self, name: str, code: str) -> str:
        tag = f"[{name}]".ljust(self.width + 2)
        return f"\x1b[{code}m{tag}\x1b[0m " if self.colour else f"{tag} "

    def line(self, name: str, code: str, text: str) -> None:
        """One line of a child's output."""
        self._write(self._prefix(name, code) + text + "\n")

    def say(self, text: str) -> None:
        """A line from the supervisor."""
        for part in text.splitlines() or [""]:
            self._write(self._prefix("dev", "1") + part + "\n")

    def alert(self, text: str) -> None:
        """A line that must not be missed (a child died, the stack gives up)."""
        for part in text.splitlines() or [""]:
            body = f"\x1b[1;31m{part}\x1b[0m" if self.colour else part
            self._write(self._prefix("dev", "1;31") + body + "\n")


@dataclass
class ChildSpec:
    """How to run, check and stop one child process."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(repr=False)
    health: HealthCheck | None = None
    start_timeout: float = 60.0
    # A child that is not required and not healthy in time is reported, and the stack runs on.
    required: bool = True
    # How long the process must have been alive before it counts as up (for children with no port).
    settle: float = 0.0
    stop_timeout: float = 10.0
    # Runs before every (re)start, e.g. to re-render a config file.
    prepare: Callable[[], None] | None = None
    cwd: Path = ROOT


@dataclass
class Child:
    """A child's runtime state."""

    spec: ChildSpec
    colour: str
    proc: subprocess.Popen[bytes] | None = None
    pump: threading.Thread | None = None
    started_at: float = 0.0
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))
    restarts: deque[float] = field(default_factory=deque)
    restart_at: float | None = None
    awaiting_health: bool = False
    health_deadline: float = 0.0
    next_health_check: float = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return fn


# Resolved once here: the child runs the preexec hook between fork and exec, where loading a library
# could deadlock on a lock another thread held at fork time.
_PRCTL = _load_prctl()


def _die_with(parent_pid: int) -> Callable[[], None]:
    """A preexec hook: the kernel SIGKILLs the child when the supervisor dies, even by SIGKILL."""

    def hook() -> None:
        if _PRCTL is not None:
            _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        # The supervisor may have died between fork and prctl: then nobody would ever kill us.
        if os.getppid() != parent_pid:
            os._exit(1)

    return hook


def describe_exit(code: int | None) -> str:
    """'exit code 1' or 'killed by SIGKILL'."""
    if code is None:
        return "could not be started"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """Starts children in order, waits for health, restarts the dead with backoff, stops them in reverse."""

    def __init__(
        self,
        console: Console,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 10.0,
        max_restarts: int = MAX_RESTARTS,
        restart_window: float = RESTART_WINDOW,
        on_restart: Callable[[Child], None] | None = None,
    ) -> None:
        self.console = console
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.on_restart = on_restart
        self.children: list[Child] = []
        self.signals = 0
        # The child `start` is waiting for: it reports its own health, so `tick` leaves it alone.
        self._starting: Child | None = None
        # Children are spawned from this (the main) thread only: PDEATHSIG fires when the spawning
        # *thread* exits, so a short-lived helper thread would take its children with it.
        self._hook = _die_with(os.getpid())

    # Signals ---------------------------------------------------------------------------------------
    @property
    def stop_requested(self) -> bool:
        return self.signals > 0

    def request_stop(self, signum: int, _frame: FrameType | None = None) -> None:
        """Signal handler: the first signal stops gracefully, a second one kills what is left."""
        self.signals += 1
        if self.signals == 1:
            self.console.say(f"{signal.Signals(signum).name}: stopping the stack (again to force)")

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Routes SIGINT, SIGTERM and SIGHUP to request_stop while inside."""
        sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        previous = {s: signal.signal(s, self.request_stop) for s in sigs}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def sleep(self, seconds: float) -> None:
        """Sleeps in short steps so that a stop request is noticed at once."""
        end = time.monotonic() + seconds
        while not self.stop_requested:
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.05))

    # Processes -------------------------------------------------------------------------------------
    def _pump(self, child: Child, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            child.tail.append(text)
            self.console.line(child.name, child.colour, text)
        stream.close()

    def _spawn(self, child: Child) -> None:
        spec = child.spec
        child.started_at = time.monotonic()
        child.tail.clear()
        try:
            if spec.prepare is not None:
                spec.prepare()
            proc = subprocess.Popen(
                spec.argv,
                env=spec.env,
                cwd=spec.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                # Own session: a terminal's Ctrl-C reaches only the supervisor, which stops children in order.
                start_new_session=True,
                preexec_fn=self._hook,
            )
        except Exception as exc:  # a missing binary or a failed prepare is a death like any other
            child.proc = None
            child.tail.append(f"cannot start {spec.argv[0]}: {exc!r}")
            self._died(child, None)
            return
        child.proc = proc
        assert proc.stdout is not None
        child.pump = threading.Thread(
            target=self._pump, args=(child, proc.stdout), name=f"log-{child.name}", daemon=True
        )
        child.pump.start()

    def _died(self, child: Child, code: int | None) -> None:
        """Reports a death loudly and schedules a restart, or gives up."""
        if child.pump is not None:
            child.pump.join(1.0)  # the last lines are the interesting ones
        child.proc = None
        child.awaiting_health = False
        lines = list(child.tail)[-REPORT_LINES:]
        report = [f"!!! {child.name} {describe_exit(code)}" + (f"; its last {len(lines)} lines:" if lines else "")]
        report += [f"!!!   {line}" for line in lines]
        self.console.alert("\n".join(report))
        now = time.monotonic()
        while child.restarts and now - child.restarts[0] > self.restart_window:
            child.restarts.popleft()
        if len(child.restarts) >= self.max_restarts:
            raise StackFailed(
                f"{child.name} died after {len(child.restarts)} restarts within {self.restart_window:.0f} s; giving up"
            )
        delay = min(self.backoff_base * 2 ** len(child.restarts), self.backoff_max)
        child.restart_at = now + delay
        self.console.alert(
            f"!!! restarting {child.name} in {delay:.1f} s "
            f"(restart {len(child.restarts) + 1} of at most {self.max_restarts} per {self.restart_window:.0f} s)"
        )

    def tick(self) -> None:
        """Notices deaths, performs due restarts and reports children coming back; raises StackFailed."""
        now = time.monotonic()
        for child in self.children:
            if child.proc is not None and child.proc.poll() is not None:
                self._died(child, child.proc.returncode)
            elif child.proc is None and child.restart_at is not None and now >= child.restart_at:
                child.restart_at = None
                child.restarts.append(now)
                self._spawn(child)
                if child.proc is not None:
                    self.console.say(f"restarted {child.name} (pid {child.pid})")
                    child.awaiting_health = True
                    child.health_deadline = now + child.spec.start_timeout
                    child.next_health_check = now
                    if self.on_restart is not None:
                        self.on_restart(child)
            elif (
                child.awaiting_health
                and child is not self._starting
                and child.alive()
                and now >= child.next_health_check
            ):
                child.next_health_check = now + 0.5
                if self._healthy(child):
                    child.awaiting_health = False
                    self.console.say(f"{child.name} is healthy again")
                elif now > child.health_deadline:
                    child.awaiting_health = False
                    self.console.alert(
                        f"!!! {child.name} restarted but is not healthy after {child.spec.start_timeout:.0f} s"
                    )

    def _healthy(self, child: Child) -> bool:
        if not child.alive() or time.monotonic() - child.started_at < child.spec.settle:
            return False
        if child.spec.health is None:
            return True
        try:
            return child.spec.health()
        except Exception:
            return False

    def start(self, spec: ChildSpec) -> Child:
        """Starts a child and waits until it is healthy (restarting it if it dies meanwhile)."""
        child = Child(spec, _COLOURS[len(self.children) % len(_COLOURS)])
        self.console.width = max(self.console.width, len(spec.name))
        self.children.append(child)
        self._starting = child
        try:
            self._spawn(child)
            while True:
                self.tick()
                if self.stop_requested:
                    raise StopRequested
                if self._healthy(child):
                    child.awaiting_health = False
                    took = time.monotonic() - child.started_at
                    self.console.say(f"{spec.name} is up (pid {child.pid}, {took:.1f} s)")
                    return child
                if child.alive() and time.monotonic() - child.started_at > spec.start_timeout:
                    child.awaiting_health = False
                    if spec.required:
                        raise StackFailed(f"{spec.name} is running but not healthy after {spec.start_timeout:.0f} s")
                    self.console.alert(
                        f"!!! {spec.name} is running but not healthy after "
                        f"{spec.start_timeout:.0f} s; carrying on without it being confirmed"
                    )
                    return child
                self.sleep(0.1)
        finally:
            self._starting = None

    def restart(self, name: str) -> None:
        """Stops a child on purpose and starts it again at once (not counted as a crash)."""
        for child in self.children:
            if child.name == name:
                self._stop_child(child)
                self._spawn(child)
                child.awaiting_health = child.proc is not None
                child.health_deadline = time.monotonic() + child.spec.start_timeout
                if self.on_restart is not None and child.proc is not None:
                    self.on_restart(child)
                return
        raise KeyError(name)

    def run_until_stopped(self, every: Callable[[], None] | None = None, period: float = 1.0) -> None:
        """Supervises until a stop request; raises StackFailed when a child keeps dying."""
        next_periodic = time.monotonic() + period
        while not self.stop_requested:
            self.tick()
            if every is not None and time.monotonic() >= next_periodic:
                next_periodic = time.monotonic() + period
                every()
            self.sleep(0.1)

    def _stop_child(self, child: Child) -> None:
        proc = child.proc
        child.restart_at = None
        child.awaiting_health = False
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            deadline = time.monotonic() + child.spec.stop_timeout
            while proc.poll() is None and time.monotonic() < deadline and self.signals < 2:
                time.sleep(0.05)
            if proc.poll() is None:
                why = "second signal" if self.signals >= 2 else f"no exit within {child.spec.stop_timeout:.0f} s"
                self.console.alert(f"!!! {child.name} killed ({why})")
                proc.kill()
                proc.wait()
        if child.pump is not None:
            child.pump.join(1.0)
        child.proc = None

    def stop_all(self) -> None:
        """Stops every child, last started first: SIGTERM, then SIGKILL after its timeout."""
        for child in reversed(self.children):
            was_running = child.alive()
            self._stop_child(child)
            if was_running:
                self.console.say(f"stopped {child.name}")


# Health checks ---------------------------------------------------------------------------------------
def tcp_check(addr: str) -> HealthCheck:
    """Up when host:port accepts a connection."""
    host, port = split_addr(addr)

    def check() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    return check


def http_check(url: str) -> HealthCheck:
    """Up when GET `url` answers 200."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                return int(resp.status) == 200
        except (OSError, urllib.error.URLError, ValueError):
            return False

    return check


def grpc_check(target: str) -> HealthCheck:
    """Up when grpc.health.v1 reports SERVING for the whole server."""

    def check() -> bool:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        # A fresh channel per check: a long-lived one would sit in reconnect backoff after early refusals.
        with grpc.insecure_channel(target) as channel:
            try:
                resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            except grpc.RpcError:
                return False
            return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    return check


def redis_check(url: str, key: str | None = None) -> HealthCheck:
    """Up when Redis answers PING (and, with `key`, when that key exists)."""

    def check() -> bool:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        try:
            return bool(client.exists(key)) if key else bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    return check


# The stack -------------------------------------------------------------------------------------------
@dataclass
class Settings:
    """Everything the stack decided: addresses, ports, stores, credentials."""

    data_dir: Path
    grpc_addr: str
    bridge_addr: str
    simulator_addr: str
    web_addr: str
    admin_port: int
    mongo_port: int | None
    redis_port: int | None
    mongodb_uri: str
    mongodb_db: str
    redis_url: str
    jwt_secret: str = field(repr=False)
    simulated_twilio: bool
    twilio_account_sid: str
    twilio_auth_token: str = field(repr=False)
    twilio_from_number: str
    twilio_api_base_url: str | None
    public_base_url: str

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


def decide(cfg: Config, env: dict[str, str]) -> Settings:
    """Turns the Config (and which settings the user really set) into the stack's settings."""
    data_dir = cfg.data_dir.resolve()
    stored = load_secrets(data_dir)
    simulated = not (cfg.twilio_account_sid and cfg.twilio_auth_token)
    mongo_port = None if cfg.mongodb_uri else free_port()
    redis_port = None if cfg.redis_url else free_port()
    bridge_url = _url(cfg.bridge_addr)
    if simulated:
        # The simulator signs its callbacks for the URL it posts to, so the bridge must check against the same.
        public_base_url = bridge_url
    else:
        public_base_url = env.get("SMS_PUBLIC_BASE_URL", "").rstrip("/") or bridge_url
    return Settings(
        data_dir=data_dir,
        grpc_addr=cfg.grpc_addr,
        bridge_addr=cfg.bridge_addr,
        simulator_addr=cfg.simulator_addr,
        web_addr=cfg.web_addr,
        admin_port=free_port(),
        mongo_port=mongo_port,
        redis_port=redis_port,
        mongodb_uri=cfg.mongodb_uri or mongo_uri(mongo_port or 0),
        mongodb_db=cfg.mongodb_db,
        redis_url=cfg.redis_url or f"redis://127.0.0.1:{redis_port}/0",
        jwt_secret=cfg.jwt_secret or stored["jwt_secret"],
        simulated_twilio=simulated,
        twilio_account_sid=stored["twilio_account_sid"] if simulated else cfg.twilio_account_sid,
        twilio_auth_token=stored["twilio_auth_token"] if simulated else cfg.twilio_auth_token,
        twilio_from_number=cfg.twilio_from_number
        or (DEFAULT_FROM_NUMBER if not cfg.twilio_messaging_service_sid else ""),
        twilio_api_base_url=_url(cfg.simulator_addr) if simulated else cfg.twilio_api_base_url,
        public_base_url=public_base_url,
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
    return out


def child_specs(cfg: Config, s: Settings, env: dict[str, str], console: Console) -> list[ChildSpec]:
    """The children in start order; each depends only on those before it."""
    cenv = child_env(s, env)
    specs: list[ChildSpec] = []
    if s.mongo_port is not None:
        storage = s.data_dir / "mongo"
        storage.mkdir(parents=True, exist_ok=True)
        specs.append(
            ChildSpec("mongo", mongo_command(storage, s.mongo_port), cenv, tcp_check(f"127.0.0.1:{s.mongo_port}"))
        )
    if s.redis_port is not None:
        (s.data_dir / "redis").mkdir(parents=True, exist_ok=True)
        # Valkey's notice-level start-up banner drowns the other children's lines; warnings still show.
        argv = [*redis_command(s.data_dir / "redis", s.redis_port), "--loglevel", "warning"]
        specs.append(ChildSpec("redis", argv, cenv, redis_check(s.redis_url), start_timeout=30))
    specs.append(
        ChildSpec(
            "server",
            [*SMS_GATEWAY, "server"],
            cenv,
            grpc_check(s.grpc_addr),
            stop_timeout=float(cenv["SMS_DRAIN_SECONDS"] or 0) + 5,
        )
    )
    if s.simulated_twilio:
        specs.append(
            ChildSpec(
                "simulator", [*SMS_GATEWAY, "twilio-simulator"], cenv, http_check(_url(s.simulator_addr) + "/healthz")
            )
        )
    health_key = cfg.arq_queue + ":health-check"

    def forget_stale_health() -> None:
        # The key outlives a worker by its TTL (and Valkey persists it): a leftover would look healthy.
        with contextlib.suppress(Exception):
            import redis

            client = redis.Redis.from_url(s.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
            client.delete(health_key)
            client.close()

    specs.append(
        ChildSpec(
            "worker",
            [*SMS_GATEWAY, "worker"],
            cenv,
            redis_check(s.redis_url, health_key),
            start_timeout=20,
            required=False,
            settle=1.0,
            prepare=forget_stale_health,
        )
    )
    specs.append(ChildSpec("bridge", [*SMS_GATEWAY, "bridge"], cenv, http_check(_url(s.bridge_addr) + "/healthz")))

    def render_envoy() -> None:
        render(EnvoyPorts(s.web_addr, s.grpc_addr, s.admin_port), s.envoy_config, DIST_DIR)

    if not DIST_DIR.is_dir():
        console.say(
            f"note: {DIST_DIR.relative_to(ROOT)} does not exist, so the web UI is not served "
            "(./dev.sh builds it, or: npm --prefix clients/web run build; it is served once built)"
        )
    specs.append(
        ChildSpec(
            "envoy",
            envoy_command(s.envoy_config),
            cenv,
            http_check(f"http://127.0.0.1:{s.admin_port}/ready"),
            prepare=render_envoy,
        )
    )
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
        "web_ui_built": DIST_DIR.is_dir(),
        "users": dict(DEMO_USERS),
        "tokens": tokens,
        "pids": {child.name: child.pid for child in sup.children},
    }


def banner(info: dict[str, Any]) -> str:
    """The summary printed once everything is healthy (no secrets beyond the demo tokens)."""
    urls = info["urls"]
    lines = [
        "sms-gateway dev is up",
        f"  web UI     {urls['web']}" + ("" if info["web_ui_built"] else "   (not built: ./dev.sh builds it)"),
        f'  gRPC       {urls["grpc"]}   (grpcurl -plaintext -H "authorization: Bearer $TOKEN" {urls["grpc"]} list)',
        f"  bridge     {urls['bridge']}   (Twilio webhooks: /twilio/inbound, /twilio/status)",
    ]
    if urls["simulator"]:
        lines.append(f"  simulator  {urls['simulator']}   (account {info['twilio']['account_sid']})")
    else:
        lines.append(
            f"  Twilio     real account {info['twilio']['account_sid']}; webhooks must reach {urls['public_base_url']}"
        )
    lines.append(f"  from       {info['twilio']['from_number'] or '(messaging service)'}")
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
    """Problems that would only surface later as a crash loop: ports already taken."""
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
    return problems


def run(cfg: Config) -> int:
    """Runs the stack until Ctrl-C or SIGTERM (exit 0), or until it cannot run (exit 1)."""
    console = Console()
    env = dict(os.environ)
    data_dir = cfg.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    # One stack per data dir: two SecantusDB or Valkey processes on the same files would corrupt them.
    lock = open(data_dir / "dev.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        console.alert(f"!!! another `sms-gateway dev` is running with the data dir {data_dir}")
        lock.close()
        return 1
    try:
        return _run_locked(cfg, env, console)
    finally:
        lock.close()


def _run_locked(cfg: Config, env: dict[str, str], console: Console) -> int:
    s = decide(cfg, env)
    problems = preflight(s)
    if problems:
        for problem in problems:
            console.alert(f"!!! {problem}")
        return 1
    info: dict[str, Any] = {}

    def write_info(_child: Child | None = None) -> None:
        if info:
            info["pids"] = {child.name: child.pid for child in sup.children}
            info["web_ui_built"] = DIST_DIR.is_dir()
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
            sup.run_until_stopped(every=ui_watcher(sup, console))
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


def ui_watcher(sup: Supervisor, console: Console, dist: Path = DIST_DIR) -> Callable[[], None]:
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
