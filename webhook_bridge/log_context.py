"""The bridge's log correlation: each post's lines carry Twilio's idempotency token as their trace id.

Twilio sends `I-Twilio-Idempotency-Token` with every webhook, the same on each retry of one event, so the
bridge's lines of all attempts at one callback share a trace id, and the ingest client passes it on to the
server as gRPC metadata `x-request-id` (webhook_bridge/ingest_client.py), whose lines of that call then carry it
too. A missing or malformed token (over 128 chars, or not visible ASCII) is replaced by a fresh id.

The post's MessageSid is added as `twilio_sid` by the ingest client once the handler has read and parsed the
body: reading it here would bypass the handler's size and time bounds on the body.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from server import log_context

IDEMPOTENCY_HEADER = "I-Twilio-Idempotency-Token"


@web.middleware
async def bind_trace_id(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Binds `trace_id` for the request; the fields added while it runs end with it."""
    with log_context.bind(trace_id=log_context.trace_id_from(request.headers.get(IDEMPOTENCY_HEADER))):
        return await handler(request)
