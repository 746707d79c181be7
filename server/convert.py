"""Stored documents to sms.v1 messages."""

from __future__ import annotations

from sms.v1 import types_pb2

from server import status as st
from server.documents import ConversationDoc, MessageDoc
from server.segments import GSM7, UCS2
from server.timeutil import to_timestamp

_DIRECTION = {
    "outbound": types_pb2.DIRECTION_OUTBOUND,
    "inbound": types_pb2.DIRECTION_INBOUND,
    "note": types_pb2.DIRECTION_NOTE,
}

_SCHEDULE_REASON = {
    "requested": types_pb2.SCHEDULE_REASON_REQUESTED,
    "quiet_hours": types_pb2.SCHEDULE_REASON_QUIET_HOURS,
}
_ENCODING = {GSM7: types_pb2.ENCODING_GSM7, UCS2: types_pb2.ENCODING_UCS2}


def message_to_proto(doc: MessageDoc) -> types_pb2.Message:
    """The API view of a stored message."""
    msg = types_pb2.Message(
        id=str(doc["_id"]),
        conversation_id=doc["conversation_id"],
        direction=_DIRECTION.get(doc.get("direction", ""), types_pb2.DIRECTION_UNSPECIFIED),
        from_number=doc.get("from", ""),
        to_number=doc.get("to", ""),
        body=doc.get("body", ""),
        media=[
            types_pb2.Media(url=m.get("url", ""), content_type=m.get("content_type", "")) for m in doc.get("media", [])
        ],
        status=st.to_proto(doc.get("status", "")),
        status_history=[
            types_pb2.StatusChange(
                status=st.to_proto(h["status"]),
                time=to_timestamp(h.get("time")),
                error_code=h.get("error_code") or 0,
                error_message=h.get("error_message") or "",
                applied=h.get("applied", True),
            )
            for h in doc.get("status_history", [])
        ],
        error_code=doc.get("error_code") or 0,
        error_message=doc.get("error_message") or "",
        twilio_sid=doc.get("twilio_sid") or "",
        owner=doc.get("owner", ""),
        contact_id=doc.get("contact_id") or "",
        request_id=doc.get("request_id") or "",
        attempts=doc.get("attempts", 0),
        segments=doc.get("segments") or 0,
        price=doc.get("price") or "",
        price_unit=doc.get("price_unit") or "",
        create_time=to_timestamp(doc.get("created")),
        update_time=to_timestamp(doc.get("updated")),
        # Outbound messages stored before `author` existed name their sender.
        author=doc.get("author") or doc.get("sender") or "",
        scheduled_time=to_timestamp(doc.get("send_at")),
        schedule_reason=_SCHEDULE_REASON.get(doc.get("schedule_reason", ""), types_pb2.SCHEDULE_REASON_UNSPECIFIED),
        encoding=_ENCODING.get(doc.get("encoding", ""), types_pb2.ENCODING_UNSPECIFIED),
        retry_of=doc.get("retry_of") or "",
        retried_by=doc.get("retried_by") or "",
    )
    return msg


def conversation_to_proto(doc: ConversationDoc) -> types_pb2.Conversation:
    """The API view of a stored conversation."""
    return types_pb2.Conversation(
        id=doc["_id"],
        our_number=doc.get("our_number", ""),
        contact_number=doc.get("contact_number", ""),
        contact_id=doc.get("contact_id") or "",
        owner=doc.get("owner", ""),
        last_message_preview=doc.get("last_message_preview", ""),
        last_message_time=to_timestamp(doc.get("last_message_at")),
        last_message_direction=_DIRECTION.get(doc.get("last_message_direction", ""), types_pb2.DIRECTION_UNSPECIFIED),
        unread_count=doc.get("unread_count", 0),
        message_count=doc.get("message_count", 0),
        opted_out=doc.get("opted_out", False),
        create_time=to_timestamp(doc.get("created")),
        update_time=to_timestamp(doc.get("updated")),
        contact_name=doc.get("contact_name") or "",
        labels=doc.get("labels") or [],
        assignment_history=[
            types_pb2.Assignment(
                actor=a.get("actor", ""),
                from_assignee=a.get("from", ""),
                to_assignee=a.get("to", ""),
                time=to_timestamp(a.get("time")),
            )
            for a in doc.get("assignment_history") or []
        ],
        time_zone=doc.get("time_zone") or "",
    )
