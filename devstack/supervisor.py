"""A generic process supervisor: child specs and state, a console with prefixed logs, start order, restarts."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import IO, TextIO

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
        """The spec's name, which prefixes the child's log lines."""
        return self.spec.name

    @property
    def pid(self) -> int | None:
        """The running process's id, None between a death and its restart."""
        return self.proc.pid if self.proc is not None else None

    def alive(self) -> bool:
        """True while the process runs."""
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
