"""Call metadata for sms-gateway's bearer-token auth."""

from __future__ import annotations


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata that carries `token` as a bearer credential."""
    return (("authorization", f"Bearer {token}"),)
