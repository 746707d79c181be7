"""Client helpers for sms-gateway; the generated stubs live in `sms.v1`."""

from sms_gateway_client.auth import bearer_metadata
from sms_gateway_client.subscribe import Backoff, subscribe

__all__ = ["Backoff", "bearer_metadata", "subscribe"]
