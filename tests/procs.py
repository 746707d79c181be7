"""Starting and stopping the project's real processes for tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.embedded import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
SMS_GATEWAY = [sys.executable, "-m", "server.cli"]
LOG_DIR = Path(os.environ.get("SMS_TEST_LOG_DIR", "/tmp/sms-gateway-test-logs"))


class Proc:
    """A child process of the test run with its log file; `stop` is SIGTERM and waits."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str]) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.args = args
        self.env = dict(env)
        self.log_path = LOG_DIR / f"{name}-{os.getpid()}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)

    def log(self) -> str:
        """What the process has printed so far."""
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

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

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def wait_healthy(target: str, timeout: float = 30.0, proc: Proc | None = None) -> None:
    """Waits until the gRPC server at `target` reports SERVING."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.log()[-3000:]}")
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as exc:
                last = exc
            time.sleep(0.1)
    raise TimeoutError(f"{target} not SERVING after {timeout} s: {last}")


def start_server(env: Mapping[str, str], port: int = 0) -> tuple[Proc, str]:
    """Starts `sms-gateway server` on a free port; returns it and its address once SERVING."""
    port = port or free_port()
    addr = f"127.0.0.1:{port}"
    proc = Proc("server", [*SMS_GATEWAY, "server"], {**env, "SMS_GRPC_ADDR": addr})
    wait_healthy(addr, proc=proc)
    return proc, addr


def start_http_process(name: str, subcommand: str, env: Mapping[str, str], host: str, port: int) -> Proc:
    """Starts an `sms-gateway` subcommand that listens on host:port and waits until it accepts."""
    proc = Proc(name, [*SMS_GATEWAY, subcommand], env)
    try:
        wait_for_port(host, port, 30, proc.process)
    except Exception as exc:
        proc.stop()
        raise RuntimeError(f"{name} did not start: {exc}\n{proc.log()[-3000:]}") from exc
    return proc
