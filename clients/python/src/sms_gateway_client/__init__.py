"""Client helpers for sms-gateway; the generated stubs live in `sms.v1`."""

from sms_gateway_client.auth import bearer_metadata

__all__ = ["bearer_metadata"]
