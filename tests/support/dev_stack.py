"""`sms-gateway dev` as a test fixture: the whole stack on free ports with a throwaway data dir, and its simulator."""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from server.config import without_settings
from server.embedded import free_port
from tests.support.polling import eventually
from tests.support.processes import SMS_GATEWAY, ChildProcess


class DevStack:
    """A running `sms-gateway dev`; `info` is its dev.json."""

    def __init__(self, proc: ChildProcess, data_dir: Path, info: dict[str, Any]) -> None:
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
        """Re-reads dev.json until `condition(info)` holds; fails with the log's tail when time runs out."""

        def probe() -> dict[str, Any]:
            self.proc.check_alive()
            return self.reload()

        with self.proc.log_on_error():
            # OSError, ValueError: a read between a restart's rewrite and the file being back.
            return eventually(
                probe, timeout, "a dev.json condition", until=condition, interval=0.1, ignoring=(OSError, ValueError)
            )

    def log(self) -> str:
        """Everything the stack printed so far."""
        return self.proc.log()

    def stop(self, sig: int = signal.SIGINT, timeout: float = 45.0) -> int:
        """Sends `sig` (Ctrl-C by default) and waits; returns the exit code."""
        return self.proc.stop(sig, timeout)


def start_dev_stack(
    env: Mapping[str, str] | None = None, data_dir: Path | None = None, timeout: float = 90.0, replicas: int = 1
) -> DevStack:
    """Starts `sms-gateway dev` (`--replicas`) on free ports and returns once dev.json exists (everything healthy)."""
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
    proc = ChildProcess("dev", [*SMS_GATEWAY, "dev", "--replicas", str(replicas)], full_env)
    info_path = data_dir / "dev.json"

    def written() -> dict[str, Any]:
        proc.check_alive()
        info: dict[str, Any] = json.loads(info_path.read_text())
        return info

    with proc.log_on_error(stop=True):
        # Written atomically once everything is healthy: a ValueError would be a foreign, half-written file.
        info = eventually(
            written, timeout, "sms-gateway dev to write dev.json", interval=0.1, ignoring=(OSError, ValueError)
        )
    return DevStack(proc, data_dir, info)


@contextmanager
def dev_stack(
    env: Mapping[str, str] | None = None, data_dir: Path | None = None, timeout: float = 90.0, replicas: int = 1
) -> Iterator[DevStack]:
    """`sms-gateway dev` for the duration of a with-block; a data dir it made itself is removed after."""
    own_dir = data_dir is None
    stack = start_dev_stack(env, data_dir, timeout, replicas)
    try:
        yield stack
    finally:
        stack.stop()
        if own_dir:
            shutil.rmtree(stack.data_dir, ignore_errors=True)


# The Twilio simulator's control API ---------------------------------------------------------------------
def sim_request(stack: DevStack, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
    """One JSON call to the simulator's control API."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"{stack.simulator_url}{path}", data=data, method=method, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw else None


def inject_inbound(stack: DevStack, sender: str, body: str, timeout: float = 30.0) -> dict[str, Any]:
    """A contact texts our number: the simulator posts the signed inbound webhook; returns once it is answered."""
    to = stack.info["twilio"]["from_number"]
    result: dict[str, Any] = sim_request(
        stack, "POST", "/_sim/inbound", {"from": sender, "to": to, "body": body}, timeout
    )
    assert result["status"] == 200, f"the bridge did not take the inbound message: {result}"
    return result


def patch_rules(stack: DevStack, rules: dict[str, Any]) -> None:
    """Merges the top-level keys of `rules` into the simulator's rules in force."""
    sim_request(stack, "PATCH", "/_sim/rules", rules)


def sim_messages(stack: DevStack, **query: str) -> list[dict[str, Any]]:
    """Every message the simulator was asked to send or had injected (GET /_sim/messages), oldest first; `query`
    narrows it: direction (inbound | outbound-api), to, from, sid."""
    qs = urllib.parse.urlencode(query)
    found: list[dict[str, Any]] = sim_request(stack, "GET", f"/_sim/messages{'?' + qs if qs else ''}")["messages"]
    return found


def sim_creates(stack: DevStack) -> list[dict[str, Any]]:
    """Every create request that reached the simulator's Messages API (GET /_sim/creates), with its params."""
    found: list[dict[str, Any]] = sim_request(stack, "GET", "/_sim/creates")["creates"]
    return found
