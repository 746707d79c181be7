"""Who the tests act as and whom they text: tokens for the test secret, fresh user ids and phone numbers."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from server.auth import mint_token

JWT_SECRET = "test-secret-not-for-production-0123456789"
# The bridge's key: signs `ingest` tokens only (at least 32 bytes, like every signing key).
INGEST_SECRET = "test-ingest-secret-not-for-production-0123456789"


def bridge_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` as a webhook bridge gets it: without SMS_JWT_SECRET, which a bridge must not hold."""
    return {k: v for k, v in env.items() if k != "SMS_JWT_SECRET"}


def token(user: str, role: str = "agent") -> str:
    """A valid token for the test secret."""
    return mint_token(JWT_SECRET, user, role)


def auth(user: str, role: str = "agent") -> tuple[tuple[str, str], ...]:
    """Call metadata for `user` with `role`."""
    return (("authorization", f"Bearer {token(user, role)}"),)


def unique_user(prefix: str = "agent") -> str:
    """A user id no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


_counter = iter(range(10_000, 100_000))


def unique_number() -> str:
    """A valid US number (E.164) not used by any other test in this session."""
    n = next(_counter)
    return f"+1415555{n % 10000:04d}" if n < 20_000 else f"+1628555{n % 10000:04d}"
