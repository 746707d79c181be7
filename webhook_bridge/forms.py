"""Twilio's form posts: parsing the body, and turning it into SmsIngestService requests."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import parse_qsl

from multidict import MultiDict, MultiDictProxy
from sms.v1 import ingest_pb2, types_pb2

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
_MEDIA_KEY = re.compile(r"MediaUrl(\d+)\Z")
_MAX_MEDIA_INDEX = 100  # Twilio sends at most 10 attachments; anything far beyond is not a real post.
# NumSegments and ErrorCode are int32 fields of the ingest requests.
_INT32 = range(-(2**31), 2**31)


class FormError(ValueError):
    """The post cannot be used: unparsable body, or a required parameter is missing."""


def parse_form(body: bytes) -> MultiDictProxy[str]:
    """The parameters of a form-urlencoded body (UTF-8, blank values kept, order kept)."""
    try:
        text = body.decode("utf-8")
        # strict_parsing rejects pieces without '=', which Twilio never sends: such a body is not a form.
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormError("body is not a UTF-8 form") from exc
    # Twilio never sends one, and such a name could never be stored: refusing it (400) ends the post, where a
    # 503 from the store would have Twilio retry it without end.
    if any("\x00" in key for key, _ in pairs):
        raise FormError("a parameter name holds a NUL byte")
    return MultiDictProxy(MultiDict(pairs))


def _required(form: MultiDictProxy[str], name: str) -> str:
    value = form.get(name, "").strip()
    if not value:
        raise FormError(f"missing {name}")
    return value


def _int_or_keep(form: MultiDictProxy[str], name: str, params: dict[str, str]) -> int:
    """An integer parameter; a value that does not parse is kept in params instead of failing the post.

    FormError when it parses but lies outside int32: no real post carries one, and the request cannot hold it.
    """
    raw = form.get(name, "").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        params[name] = raw
        return 0
    if value not in _INT32:
        raise FormError(f"{name} is out of range")
    return value


def _media(form: MultiDictProxy[str]) -> tuple[list[types_pb2.Media], set[str]]:
    """MediaUrl{N} / MediaContentType{N} pairs in index order, and the keys they used."""
    indexed: dict[int, str] = {}
    for key in form:
        m = _MEDIA_KEY.match(key)
        if m and int(m.group(1)) <= _MAX_MEDIA_INDEX and form[key]:
            indexed[int(m.group(1))] = form[key]
    used: set[str] = set()
    media: list[types_pb2.Media] = []
    for i in sorted(indexed):
        url_key, type_key = f"MediaUrl{i}", f"MediaContentType{i}"
        used.update((url_key, type_key))
        media.append(types_pb2.Media(url=indexed[i], content_type=form.get(type_key, "")))
    return media, used


def _rest(form: MultiDictProxy[str], used: set[str], params: dict[str, str]) -> dict[str, str]:
    """Every parameter not mapped to a field, first value of each name, as posted."""
    for key, value in form.items():
        if key not in used and key not in params:
            params[key] = value
    return params


_INBOUND_FIELDS = {"MessageSid", "AccountSid", "MessagingServiceSid", "From", "To", "Body", "NumSegments", "NumMedia"}


def inbound_request(form: MultiDictProxy[str]) -> ingest_pb2.RecordInboundRequest:
    """RecordInbound for an inbound message webhook; FormError when MessageSid, From or To is missing."""
    sid = _required(form, "MessageSid")
    from_number = _required(form, "From")
    to_number = _required(form, "To")
    params: dict[str, str] = {}
    segments = _int_or_keep(form, "NumSegments", params)
    media, media_keys = _media(form)
    num_media = _int_or_keep(form, "NumMedia", params)
    if num_media != len(media):
        # Keep Twilio's own count when it disagrees with the pairs we found, so nothing is silently lost.
        params.setdefault("NumMedia", form.get("NumMedia", ""))
    return ingest_pb2.RecordInboundRequest(
        message_sid=sid,
        account_sid=form.get("AccountSid", ""),
        messaging_service_sid=form.get("MessagingServiceSid", ""),
        from_number=from_number,
        to_number=to_number,
        # Body is kept exactly (no strip): whitespace can be part of what the contact typed.
        body=form.get("Body", ""),
        media=media,
        num_segments=segments,
        params=_rest(form, _INBOUND_FIELDS | media_keys, params),
    )


def parse_dlr_date(raw: str) -> datetime | None:
    """RawDlrDoneDate (YYMMDDhhmm, UTC) as a datetime; None when absent or malformed."""
    raw = raw.strip()
    if len(raw) != 10 or not raw.isdigit():
        return None
    try:
        return datetime.strptime(raw, "%y%m%d%H%M").replace(tzinfo=UTC)
    except ValueError:
        return None


# RawDlrDoneDate is mapped to status_time but also kept in params: it is the carrier's raw value.
_STATUS_FIELDS = {"MessageSid", "MessageStatus", "ErrorCode", "ErrorMessage"}


def status_request(form: MultiDictProxy[str], now: datetime | None = None) -> ingest_pb2.RecordStatusRequest:
    """RecordStatus for a status callback; FormError when MessageSid or MessageStatus is missing."""
    sid = _required(form, "MessageSid")
    status = _required(form, "MessageStatus")
    params: dict[str, str] = {}
    error_code = _int_or_keep(form, "ErrorCode", params)
    when = parse_dlr_date(form.get("RawDlrDoneDate", "")) or now or datetime.now(UTC)
    req = ingest_pb2.RecordStatusRequest(
        message_sid=sid,
        message_status=status,
        error_code=error_code,
        error_message=form.get("ErrorMessage", ""),
        params=_rest(form, _STATUS_FIELDS, params),
    )
    req.status_time.FromDatetime(when)
    return req
