"""Bearer JWTs (HS256): who the caller is and what role they have."""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum

import jwt

from server.errors import Unauthenticated


class Role(StrEnum):
    AGENT = "agent"
    ADMIN = "admin"
    SERVICE = "service"


@dataclass(frozen=True)
class Caller:
    """An authenticated user."""

    user_id: str
    role: Role

    @property
    def sees_all(self) -> bool:
        """Admins and internal services see every conversation; agents only their own."""
        return self.role in (Role.ADMIN, Role.SERVICE)


def mint_token(secret: str, user_id: str, role: str, ttl_seconds: int = 24 * 3600) -> str:
    """A signed token for `user_id` with `role`, valid for `ttl_seconds`."""
    now = int(time.time())
    payload = {"sub": user_id, "role": Role(role).value, "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(payload, secret, algorithm="HS256")


def verify_token(secret: str, token: str) -> Caller:
    """The caller a token names; Unauthenticated when it is not a valid token of ours."""
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["sub", "exp"]})
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("token expired") from None
    except jwt.InvalidTokenError:
        raise Unauthenticated("invalid token") from None
    sub, role = claims.get("sub"), claims.get("role")
    if not isinstance(sub, str) or not sub:
        raise Unauthenticated("token has no subject")
    try:
        return Caller(sub, Role(str(role)))
    except ValueError:
        raise Unauthenticated("token has no valid role") from None


def caller_from_metadata(secret: str, metadata: tuple[tuple[str, str | bytes], ...] | None) -> Caller:
    """The caller of a gRPC call, from its `authorization: Bearer …` metadata."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else value
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("authorization metadata must be 'Bearer <token>'")
            return verify_token(secret, token.strip())
    raise Unauthenticated("missing authorization metadata")
