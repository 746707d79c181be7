"""Tokens and keys: the bridge's narrow `ingest` credential, key length, token lifetime, numeric claims."""

from __future__ import annotations

import io
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import jwt
import pytest
from sms.v1 import ingest_pb2, ingest_pb2_grpc, sms_pb2, sms_pb2_grpc

from devstack.stack import child_specs, decide
from devstack.supervisor import Console
from server.auth import Role, TokenPolicy, check_secrets, mint_token, verify_token
from server.config import Config, ConfigError
from server.errors import Unauthenticated, error_reason
from server.reasons import Reason
from tests.support.bridge import inbound_params, new_sid, post, start_bridge
from tests.support.identities import INGEST_SECRET, JWT_SECRET, unique_number, unique_user
from tests.support.launch import start_server
from tests.support.processes import SMS_GATEWAY, ChildProcess

POLICY = TokenPolicy(JWT_SECRET, INGEST_SECRET)
DAY = 24 * 3600


def signed(claims: Mapping[str, Any], key: str = JWT_SECRET) -> str:
    """A token with exactly these claims, signed with `key`."""
    return jwt.encode(dict(claims), key, algorithm="HS256")


def claims(role: str = "agent", **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "someone", "role": role, "iat": now, "exp": now + 600, **overrides}


# ---------------------------------------------------------------------------------------------------------
# Unit level: which key verifies which role, lifetime, claim types, key checks


def test_ingest_tokens_verify_with_the_ingest_key_only() -> None:
    caller = verify_token(POLICY, mint_token(INGEST_SECRET, "webhook-bridge", "ingest"))
    assert (caller.user_id, caller.role) == ("webhook-bridge", Role.INGEST)
    assert not caller.sees_all
    assert verify_token(POLICY, mint_token(JWT_SECRET, "alice", "agent")).role is Role.AGENT
    # A server without an ingest key accepts no ingest token at all.
    with pytest.raises(Unauthenticated):
        verify_token(TokenPolicy(JWT_SECRET), mint_token(INGEST_SECRET, "webhook-bridge", "ingest"))


@pytest.mark.parametrize(
    ("key", "role"),
    [(INGEST_SECRET, "admin"), (INGEST_SECRET, "service"), (INGEST_SECRET, "agent"), (JWT_SECRET, "ingest")],
    ids=["ingest key, admin", "ingest key, service", "ingest key, agent", "user key, ingest"],
)
def test_a_key_signs_only_its_own_roles(key: str, role: str) -> None:
    with pytest.raises(Unauthenticated):
        verify_token(POLICY, mint_token(key, "eve", role))


def test_token_lifetime_is_bounded() -> None:
    hour = TokenPolicy(JWT_SECRET, INGEST_SECRET, max_ttl_seconds=3600)
    assert verify_token(hour, mint_token(JWT_SECRET, "alice", "agent", ttl_seconds=3600)).user_id == "alice"
    with pytest.raises(Unauthenticated, match="lifetime"):
        verify_token(hour, mint_token(JWT_SECRET, "alice", "agent", ttl_seconds=3601))
    # The default maximum is 30 days.
    assert verify_token(JWT_SECRET, mint_token(JWT_SECRET, "alice", "agent", ttl_seconds=30 * DAY)).role is Role.AGENT
    with pytest.raises(Unauthenticated):
        verify_token(JWT_SECRET, mint_token(JWT_SECRET, "alice", "agent", ttl_seconds=30 * DAY + 1))
    # Without iat the lifetime is unknown: refused, however near exp is.
    no_iat = claims()
    del no_iat["iat"]
    with pytest.raises(Unauthenticated):
        verify_token(POLICY, signed(no_iat))
    # An iat in the future would stretch a token's life: refused beyond a minute of clock skew.
    assert verify_token(POLICY, signed(claims(iat=int(time.time()) + 30))).user_id == "someone"
    with pytest.raises(Unauthenticated, match="future"):
        verify_token(POLICY, signed(claims(iat=int(time.time()) + 300, exp=int(time.time()) + 600)))


@pytest.mark.parametrize(
    "bad",
    [
        {"exp": "99999999999"},
        {"exp": True},
        {"exp": [99999999999]},
        {"iat": "0"},
        {"iat": False},
    ],
    ids=["exp string", "exp bool", "exp list", "iat string", "iat bool"],
)
def test_exp_and_iat_must_be_numbers(bad: dict[str, Any]) -> None:
    tok = signed(claims(**bad))
    if bad.get("exp") == "99999999999":
        # PyJWT alone takes a numeric string for exp: this is what the explicit check adds.
        jwt.decode(tok, JWT_SECRET, algorithms=["HS256"])
    with pytest.raises(Unauthenticated):
        verify_token(POLICY, tok)


def test_numeric_dates_may_be_floats() -> None:
    now = time.time()
    assert verify_token(POLICY, signed(claims(iat=now, exp=now + 60.5))).user_id == "someone"


def test_signing_keys_are_long_and_distinct() -> None:
    check_secrets(SMS_JWT_SECRET=JWT_SECRET, SMS_INGEST_SECRET=INGEST_SECRET)
    check_secrets(SMS_JWT_SECRET=JWT_SECRET, SMS_INGEST_SECRET="")  # unset is Config.require's business
    with pytest.raises(ConfigError, match="SMS_JWT_SECRET must be at least 32 bytes"):
        check_secrets(SMS_JWT_SECRET="x" * 31)
    # Bytes, not characters: 16 two-byte characters are 32 bytes.
    check_secrets(SMS_INGEST_SECRET="é" * 16)
    with pytest.raises(ConfigError, match="must differ"):
        check_secrets(SMS_JWT_SECRET=JWT_SECRET, SMS_INGEST_SECRET=JWT_SECRET)


def test_dev_stack_gives_the_bridge_the_ingest_key_only(tmp_path: Path) -> None:
    cfg = Config.from_env({"SMS_DATA_DIR": str(tmp_path)})
    settings = decide(cfg, {})
    specs = {spec.name: spec for spec in child_specs(cfg, settings, {}, Console(io.StringIO(), colour=False))}
    bridge, server = specs["bridge"].env, specs["server"].env
    assert "SMS_JWT_SECRET" not in bridge
    assert bridge["SMS_INGEST_SECRET"] == server["SMS_INGEST_SECRET"]
    assert server["SMS_JWT_SECRET"] != server["SMS_INGEST_SECRET"]
    check_secrets(SMS_JWT_SECRET=server["SMS_JWT_SECRET"], SMS_INGEST_SECRET=server["SMS_INGEST_SECRET"])
    # Generated once and kept, like the JWT secret, so a restarted stack's bridge still matches its server.
    assert decide(cfg, {}).ingest_secret == settings.ingest_secret


# ---------------------------------------------------------------------------------------------------------
# Processes: start-up checks of the server, the bridge and `token`


def run(command: str, env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SMS_GATEWAY, command, *args], env=dict(env), capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"SMS_JWT_SECRET": "short-secret"}, "SMS_JWT_SECRET must be at least 32 bytes"),
        ({"SMS_INGEST_SECRET": "short-secret"}, "SMS_INGEST_SECRET must be at least 32 bytes"),
        ({"SMS_INGEST_SECRET": JWT_SECRET}, "must differ"),
    ],
    ids=["short jwt secret", "short ingest secret", "shared secret"],
)
def test_server_refuses_weak_keys(base_env: dict[str, str], overrides: dict[str, str], named: str) -> None:
    done = run("server", {**base_env, **overrides})
    assert done.returncode == 2, done.stderr[-2000:]
    assert named in done.stderr
    assert next(iter(overrides.values())) not in done.stderr  # the message never quotes the secret


def test_token_command_checks_key_and_lifetime(base_env: dict[str, str]) -> None:
    ok = run(
        "token", {**base_env, "SMS_JWT_MAX_TTL_SECONDS": "600"}, "--user", "alice", "--role", "agent", "--ttl", "600"
    )
    assert ok.returncode == 0, ok.stderr
    minted = jwt.decode(ok.stdout.strip(), JWT_SECRET, algorithms=["HS256"])
    assert minted["exp"] - minted["iat"] == 600
    too_long = run(
        "token", {**base_env, "SMS_JWT_MAX_TTL_SECONDS": "600"}, "--user", "a", "--role", "agent", "--ttl", "601"
    )
    assert too_long.returncode == 2
    assert "--ttl" in too_long.stderr and "600" in too_long.stderr
    over_default = run("token", base_env, "--user", "a", "--role", "admin", "--ttl", str(30 * DAY + 1))
    assert over_default.returncode == 2
    assert run("token", base_env, "--user", "a", "--role", "admin", "--ttl", "0").returncode == 2
    weak = run("token", {**base_env, "SMS_JWT_SECRET": "short"}, "--user", "a", "--role", "admin")
    assert weak.returncode == 2
    assert "SMS_JWT_SECRET must be at least 32 bytes" in weak.stderr
    assert weak.stdout == ""


@pytest.mark.parametrize(
    ("overrides", "named"),
    [({"SMS_INGEST_SECRET": ""}, "SMS_INGEST_SECRET"), ({"SMS_INGEST_SECRET": "short"}, "at least 32 bytes")],
    ids=["missing", "short"],
)
def test_bridge_needs_its_own_key(base_env: dict[str, str], overrides: dict[str, str], named: str) -> None:
    env = {k: v for k, v in base_env.items() if k != "SMS_JWT_SECRET"}
    env.update(SMS_WEBHOOK_VERIFY="false", SMS_BRIDGE_ADDR="127.0.0.1:9", **overrides)
    done = run("bridge", env)
    assert done.returncode == 2
    assert named in done.stderr


# ---------------------------------------------------------------------------------------------------------
# Processes: what the server accepts from whom


def md(tok: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {tok}"),)


def inbound(sid: str) -> ingest_pb2.RecordInboundRequest:
    return ingest_pb2.RecordInboundRequest(message_sid=sid, from_number=unique_number(), to_number="+15005550006")


async def test_ingest_role_is_for_sms_ingest_service_only(grpc_server: str) -> None:
    ingest_token = md(mint_token(INGEST_SECRET, "webhook-bridge", "ingest"))
    async with grpc.aio.insecure_channel(grpc_server) as channel:
        ingest = ingest_pb2_grpc.SmsIngestServiceStub(channel)
        sms = sms_pb2_grpc.SmsServiceStub(channel)
        stored = await ingest.RecordInbound(inbound(new_sid()), metadata=ingest_token, timeout=30)
        assert not stored.duplicate and stored.message.id
        # What the README says of the service role on SmsIngestService still holds.
        service = md(mint_token(JWT_SECRET, "crm", "service"))
        assert (await ingest.RecordInbound(inbound(new_sid()), metadata=service, timeout=30)).message.id

        calls: dict[str, Callable[[], Awaitable[object]]] = {
            "ListConversations": lambda: sms.ListConversations(
                sms_pb2.ListConversationsRequest(), metadata=ingest_token
            ),
            "Send": lambda: sms.Send(sms_pb2.SendRequest(to=unique_number(), body="x"), metadata=ingest_token),
            "GetQueueStats": lambda: sms.GetQueueStats(sms_pb2.GetQueueStatsRequest(), metadata=ingest_token),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await call()
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED, name
            assert error_reason(denied.value) == Reason.ROLE_NOT_ALLOWED

        forged = {
            "ingest key claiming service": mint_token(INGEST_SECRET, "eve", "service"),
            "ingest key claiming admin": mint_token(INGEST_SECRET, "eve", "admin"),
            "user key claiming ingest": mint_token(JWT_SECRET, "eve", "ingest"),
        }
        for case, tok in forged.items():
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await ingest.RecordInbound(inbound(new_sid()), metadata=md(tok), timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, case
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await sms.ListConversations(
                sms_pb2.ListConversationsRequest(), metadata=md(forged["ingest key claiming admin"])
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_server_enforces_lifetime_and_numeric_exp(grpc_server: str) -> None:
    now = int(time.time())
    cases = {
        "31 days": signed(claims(iat=now, exp=now + 31 * DAY)),
        "no iat": signed({"sub": "eve", "role": "admin", "exp": now + 600}),
        "exp as a string": signed(claims("admin", exp=str(now + 600))),
    }
    async with grpc.aio.insecure_channel(grpc_server) as channel:
        sms = sms_pb2_grpc.SmsServiceStub(channel)
        for case, tok in cases.items():
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await sms.ListConversations(sms_pb2.ListConversationsRequest(), metadata=md(tok), timeout=30)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, case
        ok = signed(claims(sub=unique_user(), iat=now, exp=now + 30 * DAY))
        await sms.ListConversations(sms_pb2.ListConversationsRequest(), metadata=md(ok), timeout=30)


@pytest.fixture(scope="module")
def server_without_ingest_key(base_env: dict[str, str]) -> Iterator[tuple[ChildProcess, str]]:
    env = {k: v for k, v in base_env.items() if k != "SMS_INGEST_SECRET"}
    proc, addr = start_server(env, name="server-no-ingest-key")
    yield proc, addr
    proc.stop()


async def test_without_ingest_key_the_server_refuses_ingest_and_the_bridge_answers_503(
    base_env: dict[str, str],
    server_without_ingest_key: tuple[ChildProcess, str],
    server_proc_factory: list[ChildProcess],
    http: aiohttp.ClientSession,
    db: Any,
) -> None:
    proc, addr = server_without_ingest_key
    assert "SMS_INGEST_SECRET is not set" in proc.log()
    async with grpc.aio.insecure_channel(addr) as channel:
        ingest = ingest_pb2_grpc.SmsIngestServiceStub(channel)
        for tok in (mint_token(INGEST_SECRET, "webhook-bridge", "ingest"), mint_token(JWT_SECRET, "crm", "service")):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await ingest.RecordInbound(inbound(new_sid()), metadata=md(tok), timeout=30)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_reason(refused.value) == Reason.INGEST_NOT_CONFIGURED
        # SmsService is unaffected.
        sms = sms_pb2_grpc.SmsServiceStub(channel)
        agent = md(mint_token(JWT_SECRET, unique_user(), "agent"))
        await sms.ListConversations(sms_pb2.ListConversationsRequest(), metadata=agent, timeout=30)

    # A bridge in front of it stores nothing and says so with 503, which Twilio retries: nothing is lost.
    bridge = start_bridge(base_env, addr)
    server_proc_factory.append(bridge.proc)
    sid = new_sid()
    answer = await post(http, bridge, "/twilio/inbound", inbound_params(sid, unique_number()))
    assert answer.status == 503
    assert await db.messages.count_documents({"twilio_sid": sid}) == 0
    assert "FAILED_PRECONDITION" in bridge.proc.log()
    assert bridge.proc.stop() == 0


def test_a_subject_over_the_user_id_bound_is_refused() -> None:
    with pytest.raises(Unauthenticated):
        verify_token(POLICY, signed(claims(sub="u" * 129)))
    assert verify_token(POLICY, signed(claims(sub="u" * 128))).user_id == "u" * 128
    with pytest.raises(ValueError):
        mint_token(JWT_SECRET, "u" * 129, "agent")
