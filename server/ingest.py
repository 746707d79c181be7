"""SmsIngestService: what the webhook bridge hands in from Twilio. The bridge's `ingest` role, and `service`."""

from __future__ import annotations

import logging

from sms.v1 import ingest_pb2, ingest_pb2_grpc

from server import limits, log_context
from server.auth import Caller, Role
from server.config import Config
from server.convert import message_to_proto
from server.documents import MediaDoc
from server.edge import Context, unary
from server.gateway import Gateway

log = logging.getLogger(__name__)


def _media(request: ingest_pb2.RecordInboundRequest) -> list[MediaDoc]:
    """The attachments, each within its bounds (server/limits.py)."""
    limits.count("media", request.media, limits.MEDIA_COUNT)
    return [
        {
            "url": limits.text(f"media[{i}].url", m.url, limits.URL_BYTES),
            "content_type": limits.text(f"media[{i}].content_type", m.content_type, limits.CONTENT_TYPE_BYTES),
        }
        for i, m in enumerate(request.media)
    ]


def _check_inbound(request: ingest_pb2.RecordInboundRequest) -> None:
    """RecordInbound's strings and params within their bounds (server/limits.py); media are checked as read."""
    for field in ("message_sid", "account_sid", "messaging_service_sid"):
        limits.ident(field, getattr(request, field))
    for field in ("from_number", "to_number"):
        limits.text(field, getattr(request, field), limits.ADDRESS_BYTES)
    limits.text("body", request.body, limits.INBOUND_BODY_BYTES)
    limits.params("params", request.params)


def _check_status(request: ingest_pb2.RecordStatusRequest) -> None:
    """RecordStatus's strings and params within their bounds (server/limits.py)."""
    limits.ident("message_sid", request.message_sid)
    limits.text("message_status", request.message_status, limits.STATUS_BYTES)
    limits.text("error_message", request.error_message, limits.ERROR_MESSAGE_BYTES)
    limits.params("params", request.params)


class IngestServicer(ingest_pb2_grpc.SmsIngestServiceServicer):
    def __init__(self, gateway: Gateway, cfg: Config) -> None:
        self.gateway = gateway
        self.cfg = cfg

    @unary(Role.INGEST, Role.SERVICE)
    async def RecordInbound(
        self, request: ingest_pb2.RecordInboundRequest, context: Context, caller: Caller
    ) -> ingest_pb2.RecordInboundResponse:
        _check_inbound(request)
        received = limits.timestamp("receive_time", request.receive_time) if request.HasField("receive_time") else None
        # Bound once checked: the sid is then within limits.ID_BYTES.
        with log_context.bind(twilio_sid=request.message_sid):
            doc, duplicate = await self.gateway.record_inbound(
                request.message_sid,
                request.from_number,
                request.to_number,
                request.body,
                _media(request),
                request.num_segments,
                dict(request.params),
                received,
                request.messaging_service_sid,
            )
            with log_context.bind(message_id=doc["_id"], conversation_id=doc["conversation_id"]):
                log.info("inbound %s", "duplicate" if duplicate else "stored")
        return ingest_pb2.RecordInboundResponse(message=message_to_proto(doc), duplicate=duplicate)

    @unary(Role.INGEST, Role.SERVICE)
    async def RecordStatus(
        self, request: ingest_pb2.RecordStatusRequest, context: Context, caller: Caller
    ) -> ingest_pb2.RecordStatusResponse:
        _check_status(request)
        at = limits.timestamp("status_time", request.status_time) if request.HasField("status_time") else None
        with log_context.bind(twilio_sid=request.message_sid):
            doc, applied = await self.gateway.record_status(
                request.message_sid, request.message_status, request.error_code, request.error_message, at
            )
            with log_context.bind(message_id=doc["_id"], conversation_id=doc["conversation_id"]):
                log.info("status %s %s", request.message_status, "applied" if applied else "not applied")
        return ingest_pb2.RecordStatusResponse(message=message_to_proto(doc), applied=applied)
