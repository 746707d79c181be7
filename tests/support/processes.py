"""Child processes with a log file each: start, stop (SIGTERM, then SIGKILL), read the log and /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the checkout: children run from it, as `./dev.sh` runs them
LOG_DIR = Path(os.environ.get("SMS_TEST_LOG_DIR", "/tmp/sms-gateway-test-logs"))
SMS_GATEWAY = [sys.executable, "-m", "server.cli"]
LOG_TAIL = 4000  # characters of a log quoted in a failure


class ChildProcess:
    """A child process whose stdout and stderr go to its own file under `log_dir`."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str], log_dir: Path = LOG_DIR) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = log_dir / f"{name}-{os.getpid()}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(args, env=dict(env), stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        """What the process has printed so far."""
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def check_alive(self) -> None:
        """Raises RuntimeError if the process has exited: a wait on it would only run out the clock."""
        if not self.alive():
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Sends `sig` and waits for exit (SIGKILL after `timeout`); returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    @contextmanager
    def log_on_error(self, *, stop: bool = False) -> Iterator[None]:
        """Adds the tail of the log to an exception leaving the block; with `stop`, stops the process first."""
        try:
            yield
        except BaseException as exc:
            if stop:
                self.stop()
            exc.add_note(f"--- the end of {self.name}'s log ({self.log_path}):\n{self.log()[-LOG_TAIL:]}")
            raise

    def rss_mib(self) -> float:
        """Resident set size, from /proc, in MiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def cpu_seconds(self) -> float:
        """User + system CPU time so far, from /proc; NaN once the process is gone."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (for grandchildren, which are not ours to wait for)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
