"""SmsIngestService: what the webhook bridge hands in from Twilio. Service role only."""

from __future__ import annotations

from sms.v1 import ingest_pb2, ingest_pb2_grpc

from server.auth import Caller, Role
from server.convert import message_to_proto
from server.documents import MediaDoc
from server.edge import Context, unary
from server.gateway import Gateway
from server.timeutil import aware


class IngestServicer(ingest_pb2_grpc.SmsIngestServiceServicer):
    def __init__(self, gateway: Gateway, jwt_secret: str) -> None:
        self.gateway = gateway
        self.jwt_secret = jwt_secret

    @unary(Role.SERVICE)
    async def RecordInbound(
        self, request: ingest_pb2.RecordInboundRequest, context: Context, caller: Caller
    ) -> ingest_pb2.RecordInboundResponse:
        media: list[MediaDoc] = [{"url": m.url, "content_type": m.content_type} for m in request.media]
        received = aware(request.receive_time.ToDatetime()) if request.HasField("receive_time") else None
        doc, duplicate = await self.gateway.record_inbound(
            request.message_sid,
            request.from_number,
            request.to_number,
            request.body,
            media,
            request.num_segments,
            dict(request.params),
            received,
            request.messaging_service_sid,
        )
        return ingest_pb2.RecordInboundResponse(message=message_to_proto(doc), duplicate=duplicate)

    @unary(Role.SERVICE)
    async def RecordStatus(
        self, request: ingest_pb2.RecordStatusRequest, context: Context, caller: Caller
    ) -> ingest_pb2.RecordStatusResponse:
        at = aware(request.status_time.ToDatetime()) if request.HasField("status_time") else None
        doc, applied = await self.gateway.record_status(
            request.message_sid, request.message_status, request.error_code, request.error_message, at
        )
        return ingest_pb2.RecordStatusResponse(message=message_to_proto(doc), applied=applied)
