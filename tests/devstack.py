"""`sms-gateway dev` as a test fixture: the whole stack on free ports with a throwaway data dir."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from server.config import without_settings
from server.embedded import free_port
from tests.procs import SMS_GATEWAY, Proc


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


class DevStack:
    """A running `sms-gateway dev`; `info` is its dev.json."""

    def __init__(self, proc: Proc, data_dir: Path, info: dict[str, Any]) -> None:
        self.proc = proc
        self.data_dir = data_dir
        self.info = info

    @property
    def info_path(self) -> Path:
        return self.data_dir / "dev.json"

    @property
    def web_url(self) -> str:
        """Envoy: the UI and grpc-web, e.g. http://127.0.0.1:PORT (no trailing slash)."""
        return str(self.info["urls"]["web"]).rstrip("/")

    @property
    def grpc_target(self) -> str:
        return str(self.info["urls"]["grpc"])

    @property
    def bridge_url(self) -> str:
        return str(self.info["urls"]["bridge"])

    @property
    def simulator_url(self) -> str:
        return str(self.info["urls"]["simulator"])

    @property
    def pids(self) -> dict[str, int]:
        return {name: int(pid) for name, pid in self.info["pids"].items() if pid is not None}

    def token(self, user: str = "admin") -> str:
        """A ready-made token of a demo user: admin (admin), alice or bob (agents)."""
        return str(self.info["tokens"][user])

    def metadata(self, user: str = "admin") -> tuple[tuple[str, str], ...]:
        """gRPC call metadata for a demo user."""
        return (("authorization", f"Bearer {self.token(user)}"),)

    def reload(self) -> dict[str, Any]:
        """Re-reads dev.json (the supervisor rewrites it when a child restarts)."""
        self.info = json.loads(self.info_path.read_text())
        return self.info

    def wait_for(self, condition: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
        """Re-reads dev.json until `condition(info)` holds; raises with the log tail when time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise RuntimeError(f"sms-gateway dev exited ({self.proc.process.returncode}):\n{self.log()[-4000:]}")
            try:
                if condition(self.reload()):
                    return self.info
            except (OSError, ValueError):
                pass  # between a restart's rewrite and our read
            time.sleep(0.1)
        raise TimeoutError(f"dev.json condition not met within {timeout} s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        """Everything the stack printed so far."""
        return self.proc.log()

    def stop(self, sig: int = signal.SIGINT, timeout: float = 45.0) -> int:
        """Sends `sig` (Ctrl-C by default) and waits; returns the exit code."""
        return self.proc.stop(sig, timeout)


def start_dev_stack(
    env: Mapping[str, str] | None = None, data_dir: Path | None = None, timeout: float = 90.0
) -> DevStack:
    """Starts `sms-gateway dev` on free ports and returns once dev.json exists (everything healthy)."""
    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="sms-dev-test-"))
    full_env = without_settings(os.environ)
    full_env.update(
        SMS_DATA_DIR=str(data_dir),
        SMS_GRPC_ADDR=f"127.0.0.1:{free_port()}",
        SMS_BRIDGE_ADDR=f"127.0.0.1:{free_port()}",
        SMS_SIMULATOR_ADDR=f"127.0.0.1:{free_port()}",
        SMS_WEB_ADDR=f"127.0.0.1:{free_port()}",
        NO_COLOR="1",
    )
    full_env.update(env or {})
    proc = Proc("dev", [*SMS_GATEWAY, "dev"], full_env)
    info_path = data_dir / "dev.json"
    deadline = time.monotonic() + timeout
    while True:
        if not proc.alive():
            code = proc.stop()
            raise RuntimeError(f"sms-gateway dev exited with {code} before it was up:\n{proc.log()[-6000:]}")
        if info_path.exists():
            try:
                info = json.loads(info_path.read_text())
                break
            except ValueError:
                pass  # written atomically, so only a foreign file could be half-written
        if time.monotonic() > deadline:
            proc.stop()
            raise TimeoutError(f"sms-gateway dev not up within {timeout} s:\n{proc.log()[-6000:]}")
        time.sleep(0.1)
    return DevStack(proc, data_dir, info)


@contextmanager
def dev_stack(
    env: Mapping[str, str] | None = None, data_dir: Path | None = None, timeout: float = 90.0
) -> Iterator[DevStack]:
    """`sms-gateway dev` for the duration of a with-block; a data dir it made itself is removed after."""
    own_dir = data_dir is None
    stack = start_dev_stack(env, data_dir, timeout)
    try:
        yield stack
    finally:
        stack.stop()
        if own_dir:
            shutil.rmtree(stack.data_dir, ignore_errors=True)
