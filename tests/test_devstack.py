"""`sms-gateway dev`: the Envoy config, the supervisor, and the whole stack from the repo."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import redis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pymongo import MongoClient
from sms.v1 import sms_pb2, sms_pb2_grpc, types_pb2

from devstack.envoy import EnvoyPorts, allowed_origins, envoy_command, normalize_origin, origin_problems, render
from devstack.stack import load_secrets, ui_watcher
from devstack.supervisor import ChildSpec, Console, StackFailed, Supervisor
from server.auth import Role, verify_token
from server.config import without_settings
from server.embedded import free_port
from tests.support.dev_stack import DevStack, dev_stack
from tests.support.polling import eventually
from tests.support.processes import ROOT, SMS_GATEWAY, ChildProcess, pid_alive

# A browser origin the stacks under test are configured to accept (SMS_WEB_ORIGINS), e.g. a Vite dev server.
DEV_SERVER_ORIGIN = "http://localhost:5173"


# grpc-web by hand ------------------------------------------------------------------------------------
def grpc_web_frame(message: bytes) -> bytes:
    """One length-prefixed data frame (flag 0)."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def parse_grpc_web(body: bytes, headers: dict[str, str]) -> tuple[list[bytes], dict[str, str]]:
    """The data frames and the trailers of a grpc-web response (trailers-only answers use headers)."""
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    i = 0
    while i + 5 <= len(body):
        flag, size = body[i], int.from_bytes(body[i + 1 : i + 5], "big")
        payload = body[i + 5 : i + 5 + size]
        i += 5 + size
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                if ":" in line:
                    key, _, value = line.partition(":")
                    trailers[key.strip().lower()] = value.strip()
        else:
            messages.append(payload)
    for key in ("grpc-status", "grpc-message"):
        if key in headers:
            trailers.setdefault(key, headers[key])
    return messages, trailers


async def grpc_web_call(
    base_url: str, method: str, request: bytes, token: str | None = None
) -> tuple[list[bytes], dict[str, str]]:
    """A unary grpc-web call as a browser makes it (binary, HTTP/1.1)."""
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1", "x-user-agent": "grpc-web-test"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url}{method}", data=grpc_web_frame(request), headers=headers, timeout=aiohttp.ClientTimeout(10)
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert resp.headers["content-type"].startswith("application/grpc-web")
        body = await resp.read()
        return parse_grpc_web(body, {k.lower(): v for k, v in resp.headers.items()})


# Envoy on its own ------------------------------------------------------------------------------------
@pytest.fixture
def dist(tmp_path: Path) -> Path:
    """A Vite-like build: index.html and a hashed bundle larger than Envoy's default 4 KiB body cap."""
    d = tmp_path / "dist"
    (d / "assets").mkdir(parents=True)
    (d / "index.html").write_text('<!doctype html><script type="module" src="./assets/index-Ab12.js"></script>')
    (d / "assets" / "index-Ab12.js").write_text("console.log('inbox');\n" * 2000)
    (d / "assets" / "index-Cd34.css").write_text("body { margin: 0 }\n")
    return d


def validate(config: Path) -> subprocess.CompletedProcess[str]:
    cmd = envoy_command(config)
    return subprocess.run([cmd[0], "--mode", "validate", *cmd[1:]], capture_output=True, text=True, timeout=30)


def test_rendered_config_passes_envoy_validate(dist: Path, tmp_path: Path) -> None:
    ports = EnvoyPorts(f"127.0.0.1:{free_port()}", "127.0.0.1:50051", free_port())
    with_ui = render(ports, tmp_path / "with-ui.yaml", dist)
    without_ui = render(ports, tmp_path / "without-ui.yaml", tmp_path / "no-such-dist")
    hostname_upstream = render(
        EnvoyPorts(f"localhost:{free_port()}", "localhost:50051", ports.admin_port), tmp_path / "dns.yaml", dist
    )
    for config in (with_ui, without_ui, hostname_upstream):
        result = validate(config)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "OK" in result.stdout + result.stderr
    text = with_ui.read_text()
    assert "timeout: 0s" in text and "grpc_timeout_header_max: 0s" in text
    assert str(dist / "assets" / "index-Ab12.js") in text
    assert "not built" in without_ui.read_text()

    broken = tmp_path / "broken.yaml"
    broken.write_text(text.replace("http.router.v3.Router", "http.router.v3.NoSuchRouter"))
    assert validate(broken).returncode != 0  # the validation above can fail


@pytest.fixture
def health_upstream() -> Iterator[str]:
    """A gRPC server with only the health service, SERVING: the upstream Envoy proxies grpc-web to."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(0)


@pytest.fixture
def envoy(dist: Path, tmp_path: Path, health_upstream: str) -> Iterator[tuple[str, str]]:
    """Envoy running the rendered config; yields (web URL, admin URL)."""
    ports = EnvoyPorts(f"127.0.0.1:{free_port()}", health_upstream, free_port())
    config = render(ports, tmp_path / "envoy.yaml", dist, (DEV_SERVER_ORIGIN,))
    proc = ChildProcess("envoy", envoy_command(config), without_settings(os.environ))
    admin = f"http://127.0.0.1:{ports.admin_port}"

    def ready() -> int:
        proc.check_alive()
        return http_status(f"{admin}/ready")

    try:
        with proc.log_on_error():
            eventually(ready, 20, "envoy /ready", until=lambda status: status == 200)
        yield f"http://{ports.web_addr}", admin
    finally:
        proc.stop()


async def test_envoy_serves_static_files(envoy: tuple[str, str], dist: Path) -> None:
    web, _ = envoy
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{web}/") as resp:
            assert resp.status == 200
            assert resp.headers["content-type"] == "text/html; charset=utf-8"
            assert await resp.text() == (dist / "index.html").read_text()
        async with session.get(f"{web}/assets/index-Ab12.js") as resp:
            assert resp.status == 200
            assert resp.headers["content-type"].startswith("text/javascript")
            assert "immutable" in resp.headers["cache-control"]
            assert await resp.read() == (dist / "assets" / "index-Ab12.js").read_bytes()
        async with session.get(f"{web}/assets/index-Cd34.css") as resp:
            assert resp.headers["content-type"].startswith("text/css")
        async with session.get(f"{web}/assets/nope.js") as resp:
            assert resp.status == 404


async def preflight(web: str, origin: str) -> dict[str, str]:
    """The headers of a browser's CORS preflight from `origin` for a grpc-web call."""
    async with (
        aiohttp.ClientSession() as session,
        session.options(
            f"{web}/sms.v1.SmsService/ListConversations",
            headers={
                "origin": origin,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization,content-type,x-grpc-web,x-user-agent,grpc-timeout",
            },
        ) as resp,
    ):
        assert resp.status == 200
        return {k.lower(): v for k, v in resp.headers.items()}


async def test_envoy_cors_preflight_exposes_grpc_headers(envoy: tuple[str, str]) -> None:
    web, _ = envoy
    headers = await preflight(web, DEV_SERVER_ORIGIN)
    assert headers["access-control-allow-origin"] == DEV_SERVER_ORIGIN
    allowed = {h.strip() for h in headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "x-grpc-web", "x-user-agent", "grpc-timeout"} <= allowed
    exposed = {h.strip() for h in headers["access-control-expose-headers"].split(",")}
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= exposed


async def test_envoy_translates_grpc_web(envoy: tuple[str, str]) -> None:
    web, _ = envoy
    messages, trailers = await grpc_web_call(
        web, "/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest().SerializeToString()
    )
    assert trailers["grpc-status"] == "0"
    assert health_pb2.HealthCheckResponse.FromString(messages[0]).status == health_pb2.HealthCheckResponse.SERVING
    _, trailers = await grpc_web_call(
        web, "/grpc.health.v1.Health/Check", health_pb2.HealthCheckRequest(service="nope").SerializeToString()
    )
    assert trailers["grpc-status"] == str(grpc.StatusCode.NOT_FOUND.value[0])


# The supervisor with stand-in children ---------------------------------------------------------------
def py_child(name: str, code: str) -> ChildSpec:
    return ChildSpec(
        name,
        [sys.executable, "-c", textwrap.dedent(code)],
        without_settings(os.environ),
        start_timeout=10,
        stop_timeout=5,
    )


def test_a_child_that_keeps_dying_is_reported_and_the_supervisor_gives_up() -> None:
    out = io.StringIO()
    sup = Supervisor(Console(out, colour=False), backoff_base=0.01, backoff_max=0.05)
    spec = py_child("crasher", "import sys; print('cannot import server.nothing', flush=True); sys.exit(3)")
    spec.settle = 0.5  # without a health check, "up" means "still alive after a moment"
    try:
        with pytest.raises(StackFailed, match="crasher died after 5 restarts"):
            sup.start(spec)
    finally:
        sup.stop_all()
    log = out.getvalue()
    assert log.count("!!! crasher exit code 3") == 6
    assert "!!!   cannot import server.nothing" in log
    assert "restart 5 of at most 5" in log


def test_a_missing_binary_or_a_child_that_never_gets_healthy_is_reported() -> None:
    out = io.StringIO()
    sup = Supervisor(Console(out, colour=False), backoff_base=0.01, backoff_max=0.05)
    try:
        with pytest.raises(StackFailed, match="ghost died after 5 restarts"):
            sup.start(ChildSpec("ghost", ["/nonexistent/ghostd"], without_settings(os.environ)))
        assert "!!! ghost could not be started" in out.getvalue()
        assert "/nonexistent/ghostd" in out.getvalue()

        sleeper = "import time; time.sleep(60)"
        optional = py_child("optional", sleeper)
        optional.health, optional.start_timeout, optional.required = (lambda: False), 0.5, False
        assert sup.start(optional).alive()  # reported, and the stack carries on
        assert "!!! optional is running but not healthy" in out.getvalue()
        required = py_child("required", sleeper)
        required.health, required.start_timeout = (lambda: False), 0.5
        with pytest.raises(StackFailed, match="required is running but not healthy"):
            sup.start(required)
    finally:
        sup.stop_all()


def test_a_killed_child_is_reported_and_restarted_and_stop_leaves_nothing() -> None:
    out = io.StringIO()
    sup = Supervisor(Console(out, colour=False), backoff_base=0.01)
    first = sup.start(py_child("sleeper", "import time; print('up', flush=True); time.sleep(60)"))
    second = sup.start(py_child("other", "import time; time.sleep(60)"))
    old_pid = first.pid
    assert old_pid is not None
    eventually(lambda: "[sleeper]   up" in out.getvalue(), 10, "the sleeper's first line")
    os.kill(old_pid, signal.SIGKILL)

    def restarted() -> bool:
        sup.tick()
        return first.pid not in (None, old_pid) and first.alive()

    eventually(restarted, 10, "the sleeper to be restarted")
    assert "!!! sleeper killed by SIGKILL" in out.getvalue()
    assert "!!!   up" in out.getvalue()
    pids = [first.pid, second.pid]
    sup.stop_all()
    assert all(pid is not None and not pid_alive(pid) for pid in pids)
    assert out.getvalue().index("stopped other") < out.getvalue().index("stopped sleeper")


def test_children_do_not_outlive_a_sigkilled_supervisor() -> None:
    script = textwrap.dedent("""
        import os, sys
        from devstack.supervisor import ChildSpec, Console, Supervisor
        sup = Supervisor(Console())
        for i in range(2):
            sup.start(ChildSpec(f"c{i}", ["sleep", "120"], dict(os.environ)))
        print("PIDS", *[c.pid for c in sup.children], flush=True)
        sup.run_until_stopped()
    """)
    proc = ChildProcess("supervisor", [sys.executable, "-c", script], without_settings(os.environ))
    try:
        eventually(lambda: "PIDS" in proc.log(), 15, "the supervisor to start its children")
        pids = [int(p) for p in proc.log().split("PIDS", 1)[1].split()[:2]]
        assert all(pid_alive(pid) for pid in pids)
        proc.stop(signal.SIGKILL)
        eventually(lambda: not any(pid_alive(pid) for pid in pids), 10, "orphaned children to die")
    finally:
        proc.stop(signal.SIGKILL)


def test_a_new_ui_build_restarts_envoy_once_it_has_settled(dist: Path) -> None:
    out = io.StringIO()
    sup = Supervisor(Console(out, colour=False))
    envoy = sup.start(py_child("envoy", "import time; time.sleep(60)"))
    try:
        first = envoy.pid
        check = ui_watcher(sup, sup.console, dist)
        check()
        assert envoy.pid == first
        (dist / "assets" / "index-Ef56.js").write_text("console.log('v2');")
        check()  # mid-build: wait for a second, identical look
        assert envoy.pid == first
        check()
        assert envoy.pid not in (None, first) and envoy.alive()
        check()
        assert "the web UI build changed" in out.getvalue()
        assert out.getvalue().count("the web UI build changed") == 1
    finally:
        sup.stop_all()


def test_only_origins_are_allowed_origins() -> None:
    assert normalize_origin("HTTPS://Inbox.Example.com:443/") == "https://inbox.example.com"
    assert normalize_origin("http://[::1]:5173") == "http://[::1]:5173"
    assert allowed_origins("localhost:8080", ["http://localhost:8080", DEV_SERVER_ORIGIN]) == [
        "http://localhost:8080",
        DEV_SERVER_ORIGIN,
    ]
    # Envoy takes a pattern matching "*" as "any origin": nothing that is not one exact origin gets through.
    for bad in ("*", "null", "http://*.example.com", "localhost:5173", "ftp://example.com", "https://a.example/app"):
        with pytest.raises(ValueError, match="not an origin"):
            normalize_origin(bad)
    assert origin_problems([DEV_SERVER_ORIGIN, "*"]) == [
        "SMS_WEB_ORIGINS: '*' is not an origin: scheme://host[:port], e.g. https://inbox.example.com"
    ]


def test_a_web_origin_that_is_not_one_stops_the_stack_before_it_starts(tmp_path: Path) -> None:
    env = without_settings(os.environ)
    # Free ports all round: were the check missing, the stack must not start on (or collide with) the defaults.
    addrs = ("SMS_GRPC_ADDR", "SMS_BRIDGE_ADDR", "SMS_SIMULATOR_ADDR", "SMS_WEB_ADDR")
    env.update({name: f"127.0.0.1:{free_port()}" for name in addrs}, SMS_DATA_DIR=str(tmp_path))
    env["SMS_WEB_ORIGINS"] = "https://ok.example,*"
    result = subprocess.run([*SMS_GATEWAY, "dev"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "SMS_WEB_ORIGINS: '*' is not an origin" in result.stdout + result.stderr
    assert "is up" not in result.stdout


def test_generated_secrets_persist_and_are_private(tmp_path: Path) -> None:
    first = load_secrets(tmp_path)
    assert re.fullmatch(r"AC[0-9a-f]{32}", first["twilio_account_sid"])
    assert len(first["jwt_secret"]) >= 32 and len(first["twilio_auth_token"]) == 32
    assert load_secrets(tmp_path) == first
    assert stat.S_IMODE((tmp_path / "secrets.json").stat().st_mode) == 0o600


# The whole stack ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def stack() -> Iterator[DevStack]:
    with dev_stack({"SMS_WEB_ORIGINS": DEV_SERVER_ORIGIN}) as s:
        yield s


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0


def test_dev_json_has_every_field(stack: DevStack) -> None:
    info = stack.info
    assert info["data_dir"] == str(stack.data_dir.resolve())
    for name in ("web", "grpc", "bridge", "simulator", "envoy_admin", "mongo", "redis"):
        assert isinstance(info["ports"][name], int), name
    assert stack.web_url == f"http://127.0.0.1:{info['ports']['web']}"
    assert re.fullmatch(r"AC[0-9a-f]{32}", info["twilio"]["account_sid"])
    assert info["twilio"]["auth_token"] and info["twilio"]["simulated"] is True
    assert info["twilio"]["from_number"] == "+15005550006"
    assert info["twilio"]["api_base_url"] == stack.simulator_url
    assert set(info["pids"]) == {"mongo", "redis", "server", "simulator", "worker", "bridge", "envoy"}
    assert stat.S_IMODE(stack.info_path.stat().st_mode) == 0o600
    for user, role in (("admin", Role.ADMIN), ("alice", Role.AGENT), ("bob", Role.AGENT)):
        caller = verify_token(info["jwt_secret"], stack.token(user))
        assert (caller.user_id, caller.role) == (user, role)
    # Secrets go to dev.json only, never to the log.
    assert info["jwt_secret"] not in stack.log()
    assert info["twilio"]["auth_token"] not in stack.log()


def test_each_process_serves_its_metrics(stack: DevStack) -> None:
    metrics = stack.info["metrics"]
    assert set(metrics) == {"server", "worker", "bridge"}
    assert len(set(metrics.values())) == 3  # a port each
    for name, url in metrics.items():
        assert url in stack.log(), f"{name}'s metrics address is not in the banner"
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain"), name
            assert "process_cpu_seconds_total" in resp.read().decode(), name


def test_every_component_answers_its_health_check(stack: DevStack) -> None:
    with grpc.insecure_channel(stack.grpc_target) as channel:
        resp = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        sms = sms_pb2_grpc.SmsServiceStub(channel)
        sms.ListConversations(sms_pb2.ListConversationsRequest(), metadata=stack.metadata("alice"), timeout=5)
        with pytest.raises(grpc.RpcError) as err:
            sms.ListConversations(
                sms_pb2.ListConversationsRequest(), timeout=5, metadata=(("authorization", "Bearer not-a-token"),)
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert http_status(f"{stack.bridge_url}/healthz") == 200
    assert http_status(f"{stack.simulator_url}/healthz") == 200
    assert http_status(f"{stack.info['urls']['envoy_admin']}/ready") == 200


async def test_grpc_web_through_envoy_with_a_demo_token(stack: DevStack) -> None:
    request = sms_pb2.ListConversationsRequest(page_size=5).SerializeToString()
    messages, trailers = await grpc_web_call(
        stack.web_url, "/sms.v1.SmsService/ListConversations", request, stack.token("admin")
    )
    assert trailers["grpc-status"] == "0", trailers
    assert len(messages) == 1
    sms_pb2.ListConversationsResponse.FromString(messages[0])
    _, trailers = await grpc_web_call(stack.web_url, "/sms.v1.SmsService/ListConversations", request, "bad")
    assert trailers["grpc-status"] == str(grpc.StatusCode.UNAUTHENTICATED.value[0])


def policy(header: str) -> dict[str, list[str]]:
    """A Content-Security-Policy header as {directive: sources}."""
    directives = (part.split() for part in header.split(";") if part.strip())
    return {name: sources for name, *sources in directives}


async def test_web_answers_carry_security_headers_and_cors_allows_only_configured_origins(stack: DevStack) -> None:
    web = stack.web_url
    request = sms_pb2.ListConversationsRequest(page_size=1).SerializeToString()
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1", "origin": "http://evil.example"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(10)) as session:
        answers = [await session.get(f"{web}{path}") for path in ("/", "/no-such-file")]
        call = session.post(f"{web}/sms.v1.SmsService/ListConversations", headers=headers, data=grpc_web_frame(request))
        answers.append(await call)
        for resp in answers:
            resp.release()
            csp = policy(resp.headers["content-security-policy"])
            assert csp["script-src"] == csp["connect-src"] == ["'self'"], csp  # no inline script, no other host
            assert csp["frame-ancestors"] == ["'none'"] and csp["default-src"] == ["'none'"], csp
            assert not any("unsafe" in source for sources in csp.values() for source in sources), csp
            assert resp.headers["x-content-type-options"] == "nosniff"
            assert resp.headers["referrer-policy"] == "no-referrer"
        # A foreign page's call is answered (the token decides), but its browser is not allowed to read it.
        assert "access-control-allow-origin" not in answers[-1].headers

    # The web address itself and SMS_WEB_ORIGINS may call the API from a browser; nothing else, not even "null".
    for origin in (web, DEV_SERVER_ORIGIN):
        assert (await preflight(web, origin)).get("access-control-allow-origin") == origin
    for origin in ("http://evil.example", "null", "http://localhost:5174", web.replace("127.0.0.1", "127.0.0.2")):
        refused = await preflight(web, origin)
        assert "access-control-allow-origin" not in refused, (origin, refused)


def test_each_child_holds_only_the_secrets_it_uses(stack: DevStack) -> None:
    def secrets_of(name: str) -> set[str]:
        raw = Path(f"/proc/{stack.pids[name]}/environ").read_bytes().split(b"\0")
        names = {entry.partition(b"=")[0].decode() for entry in raw}
        return names & {"SMS_JWT_SECRET", "SMS_INGEST_SECRET"}

    assert secrets_of("server") == {"SMS_JWT_SECRET", "SMS_INGEST_SECRET"}
    assert secrets_of("bridge") == {"SMS_INGEST_SECRET"}
    for name in ("worker", "simulator", "envoy", "mongo", "redis"):
        assert secrets_of(name) == set(), name


def test_web_root_serves_the_ui_or_explains_how_to_build_it(stack: DevStack) -> None:
    status = http_status(stack.web_url + "/")
    if (ROOT / "clients" / "web" / "dist" / "index.html").exists():
        assert status == 200
    else:
        assert status == 503
        assert "clients/web/dist does not exist" in stack.log()


def test_a_message_goes_all_the_way_through_the_simulator(stack: DevStack) -> None:
    """The wiring: worker → simulator (API base URL, credentials) → signed callback → bridge → server."""
    with grpc.insecure_channel(stack.grpc_target) as channel:
        sms = sms_pb2_grpc.SmsServiceStub(channel)
        sent = sms.Send(
            sms_pb2.SendRequest(to="+14155550123", body="hello from the dev stack", request_id="devstack-1"),
            metadata=stack.metadata("bob"),
            timeout=5,
        )
        request = sms_pb2.GetMessageRequest(message_id=sent.message.id)

        def delivered() -> bool:
            message = sms.GetMessage(request, metadata=stack.metadata("bob"), timeout=5).message
            return bool(message.status == types_pb2.MESSAGE_STATUS_DELIVERED)

        eventually(delivered, 20, "the message to be delivered")


def test_a_sigkilled_child_is_reported_and_restarted(stack: DevStack) -> None:
    old = stack.pids["bridge"]
    os.kill(old, signal.SIGKILL)
    info = stack.wait_for(lambda i: i["pids"].get("bridge") not in (None, old), timeout=20)
    assert pid_alive(info["pids"]["bridge"])
    eventually(lambda: http_status(f"{stack.bridge_url}/healthz"), 20, "the restarted bridge", until=lambda s: s == 200)
    assert "!!! bridge killed by SIGKILL" in stack.log()
    eventually(lambda: "bridge is healthy again" in stack.log(), 10, "the supervisor to see the bridge back")


def test_ctrl_c_stops_every_child_and_exits_zero(stack: DevStack) -> None:
    pids = stack.reload()["pids"]
    assert all(pid_alive(pid) for pid in pids.values())
    assert stack.stop(signal.SIGINT) == 0
    assert not stack.info_path.exists()
    still = {name: pid for name, pid in pids.items() if pid_alive(pid)}
    assert not still, f"children outlived the stack: {still}"
    log = stack.log()
    # Reverse start order: the entry point goes first, the stores last.
    assert log.index("stopped envoy") < log.index("stopped server") < log.index("stopped mongo")
    assert json.dumps(stack.info)  # the fixture's info stays readable after the stop


def test_data_and_secrets_survive_a_restart_in_a_private_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data_dir.chmod(0o755)  # made earlier, readable by everyone: the stack closes it
    with dev_stack(data_dir=data_dir) as first:
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
        for secret_file in ("secrets.json", "dev.json"):
            assert stat.S_IMODE((data_dir / secret_file).stat().st_mode) == 0o600, secret_file
        r = redis.Redis.from_url(first.info["redis_url"])
        r.set("devstack-test", "kept")
        r.close()
        client: MongoClient[dict[str, Any]] = MongoClient(first.info["mongodb_uri"])
        with client:
            client[first.info["mongodb_db"]]["devstack_test"].insert_one({"_id": "kept"})
        old_token, old_secret = first.token("alice"), first.info["jwt_secret"]
    assert (data_dir / "mongo").is_dir() and (data_dir / "redis").is_dir()
    with dev_stack(data_dir=data_dir) as second:
        assert second.info["jwt_secret"] == old_secret
        assert verify_token(second.info["jwt_secret"], old_token).user_id == "alice"
        r = redis.Redis.from_url(second.info["redis_url"])
        assert r.get("devstack-test") == b"kept"
        r.close()
        client = MongoClient(second.info["mongodb_uri"])
        with client:
            assert client[second.info["mongodb_db"]]["devstack_test"].find_one({"_id": "kept"}) is not None
        with grpc.insecure_channel(second.grpc_target) as channel:
            sms_pb2_grpc.SmsServiceStub(channel).ListConversations(
                sms_pb2.ListConversationsRequest(), metadata=(("authorization", f"Bearer {old_token}"),), timeout=5
            )
