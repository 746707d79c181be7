"""Bearer JWTs (HS256): who the caller is, what role they have, and which key may sign that role.

Two keys: SMS_JWT_SECRET signs users' and services' tokens (agent, admin, service); SMS_INGEST_SECRET signs only
the webhook bridge's `ingest` tokens. A token is verified with the key of the role it claims, so a bridge that
holds the ingest key cannot mint an admin token, and a user key cannot mint an ingest token.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import jwt

from server.config import Config, ConfigError
from server.errors import Unauthenticated
from server.limits import USER_ID_BYTES, utf8_len


class Role(StrEnum):
    AGENT = "agent"
    ADMIN = "admin"
    SERVICE = "service"
    # The webhook bridge: SmsIngestService only, signed with SMS_INGEST_SECRET.
    INGEST = "ingest"


# Roles signed with SMS_JWT_SECRET; a method that names no roles is open to these (never to INGEST).
USER_ROLES = (Role.AGENT, Role.ADMIN, Role.SERVICE)
# RFC 7518 §3.2: an HS256 key at least as long as the hash output.
MIN_SECRET_BYTES = 32
DEFAULT_MAX_TTL_SECONDS = Config.jwt_max_ttl_seconds
# Tokens minted on another host may carry an `iat` slightly ahead of this host's clock.
CLOCK_SKEW_SECONDS = 60


@dataclass(frozen=True)
class Caller:
    """An authenticated user."""

    user_id: str
    role: Role

    @property
    def sees_all(self) -> bool:
        """Admins and internal services see every conversation; agents only their own."""
        return self.role in (Role.ADMIN, Role.SERVICE)


@dataclass(frozen=True)
class TokenPolicy:
    """How tokens are checked: the key of each role and the longest lifetime a token may have."""

    user_secret: str = field(repr=False)
    ingest_secret: str = field(default="", repr=False)
    max_ttl_seconds: int = DEFAULT_MAX_TTL_SECONDS

    @classmethod
    def from_config(cls, cfg: Config) -> TokenPolicy:
        """The policy the settings describe (SMS_JWT_SECRET, SMS_INGEST_SECRET, SMS_JWT_MAX_TTL_SECONDS)."""
        return cls(cfg.jwt_secret, cfg.ingest_secret, cfg.jwt_max_ttl_seconds)

    def key_for(self, role: str) -> str:
        """The key that signs `role`'s tokens ("" when this policy accepts none)."""
        return self.ingest_secret if role == Role.INGEST else self.user_secret


def check_secrets(**secrets: str) -> None:
    """The one check of signing keys, by setting name: each one set is long enough, and no two are the same.

    Presence is Config.require's job; a key shared between roles would let either holder sign the other's.
    """
    for name, secret in secrets.items():
        if secret and len(secret.encode()) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"{name} must be at least {MIN_SECRET_BYTES} bytes (it has {len(secret.encode())}); "
                "generate one with: python3 -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
    given = [name for name, secret in secrets.items() if secret]
    if len({secrets[name] for name in given}) < len(given):
        raise ConfigError(f"{' and '.join(given)} must differ: each signs different roles")


def mint_token(secret: str, user_id: str, role: str, ttl_seconds: int = 24 * 3600) -> str:
    """A token for `user_id` with `role`, valid for `ttl_seconds`, signed with `secret` (the key of `role`)."""
    if not user_id or utf8_len(user_id) > USER_ID_BYTES:
        raise ValueError(f"a user id is 1 to {USER_ID_BYTES} bytes")
    now = int(time.time())
    payload = {"sub": user_id, "role": Role(role).value, "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(payload, secret, algorithm="HS256")


def verify_token(policy: TokenPolicy | str, token: str) -> Caller:
    """The caller a token names; Unauthenticated when it is not a valid token of ours.

    `policy` may be a bare SMS_JWT_SECRET (no ingest key, the default lifetime), for tools and tests.
    """
    if isinstance(policy, str):
        policy = TokenPolicy(policy)
    try:
        # Unverified only to learn which key to verify with; nothing is trusted before the signature checks.
        claimed = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise Unauthenticated("invalid token") from None
    role = claimed.get("role")
    key = policy.key_for(role) if isinstance(role, str) else ""
    if not key:
        raise Unauthenticated("invalid token")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=["HS256"],
            # iat is checked below, with a clock-skew allowance PyJWT's shared leeway would also give exp.
            options={"require": ["sub", "exp", "iat"], "verify_iat": False},
        )
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("token expired") from None
    except jwt.InvalidTokenError:
        raise Unauthenticated("invalid token") from None
    _check_lifetime(claims, policy.max_ttl_seconds)
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise Unauthenticated("token has no subject")
    if utf8_len(sub) > USER_ID_BYTES:
        # The subject is copied into every conversation and event the caller owns: bounded like any input.
        raise Unauthenticated(f"token subject over {USER_ID_BYTES} bytes")
    try:
        return Caller(sub, Role(str(claims.get("role"))))
    except ValueError:
        raise Unauthenticated("token has no valid role") from None


def _number(claims: dict[str, Any], name: str) -> float:
    """A NumericDate claim (RFC 7519 §2); PyJWT also takes strings such as "9999999999", so check the type."""
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Unauthenticated(f"token {name} is not a number")
    return float(value)


def _check_lifetime(claims: dict[str, Any], max_ttl_seconds: int) -> None:
    exp, iat = _number(claims, "exp"), _number(claims, "iat")
    if iat > time.time() + CLOCK_SKEW_SECONDS:
        raise Unauthenticated("token issued in the future")
    if exp - iat > max_ttl_seconds:
        raise Unauthenticated(f"token lifetime over the maximum of {max_ttl_seconds} s")


def caller_from_metadata(policy: TokenPolicy, metadata: tuple[tuple[str, str | bytes], ...] | None) -> Caller:
    """The caller of a gRPC call, from its `authorization: Bearer …` metadata."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
            return verify_token(policy, token.strip())
    raise Unauthenticated("missing authorization metadata")
