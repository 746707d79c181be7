"""Twilio's wire shapes for the simulator: message records, legacy error bodies, dates, segments."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

API_VERSION = "2010-04-01"
PRICE_UNIT = "USD"
SMS_SEGMENT_PRICE = 0.0079
MMS_PRICE = 0.0200
MAX_MEDIA = 10

# Messages Twilio sends with these codes (shortened where Twilio's embeds the offending value).
ERROR_MESSAGES: dict[int, str] = {
    20001: "Invalid parameter",
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "An internal server error has occurred",
    21211: "Invalid 'To' Phone Number",
    21408: "Permission to send an SMS has not been enabled for the region indicated by the 'To' number",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21610: "Attempt to send to unsubscribed recipient",
    21611: "This 'From' number has exceeded the maximum number of queued messages",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
    21623: "Number of media files exceeds allowed limit",
    30003: "Unreachable destination handset",
    30008: "Unknown error",
    30400: "Parameters are not valid",
    30409: "This message cannot be canceled",
}

HTTP_STATUS_OF_CODE = {20003: 401, 20404: 404, 20429: 429, 20500: 500}

# GSM 03.38 basic set plus the extension table (extension characters take two septets).
_GSM_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM_EXTENSION = set("^{}\\[~]|€\f")


def error_body(code: int, message: str | None = None, status: int | None = None) -> dict[str, Any]:
    """Twilio's legacy error JSON, which twilio-python raises as TwilioRestException."""
    return {
        "code": code,
        "message": message or ERROR_MESSAGES.get(code, "Error"),
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status or http_status_of(code),
    }


def http_status_of(code: int) -> int:
    """The HTTP status Twilio answers with for an error code (400 for the validation family)."""
    return HTTP_STATUS_OF_CODE.get(code, 400)


def rfc2822(moment: datetime | None) -> str | None:
    """Twilio's date format, e.g. `Thu, 24 Aug 2023 05:01:45 +0000`."""
    if moment is None:
        return None
    return format_datetime(moment.astimezone(UTC).replace(microsecond=0))


def now() -> datetime:
    """The current time, UTC."""
    return datetime.now(UTC)


def new_sid(prefix: str) -> str:
    """A Twilio-shaped sid: two letters and 32 lowercase hex digits."""
    return prefix + secrets.token_hex(16)


def num_segments(body: str) -> int:
    """How many SMS segments carry `body` (GSM-7 160/153 septets, else UCS-2 70/67 characters)."""
    if not body:
        return 1
    if all(ch in _GSM_BASIC or ch in _GSM_EXTENSION for ch in body):
        septets = sum(2 if ch in _GSM_EXTENSION else 1 for ch in body)
        return 1 if septets <= 160 else -(-septets // 153)
    # UCS-2 counts UTF-16 code units, so characters outside the BMP count twice.
    units = len(body.encode("utf-16-le")) // 2
    return 1 if units <= 70 else -(-units // 67)


def raw_dlr_done_date(moment: datetime) -> str:
    """The carrier receipt time in Twilio's RawDlrDoneDate form, YYMMDDhhmm."""
    return moment.astimezone(UTC).strftime("%y%m%d%H%M")


@dataclass
class Message:
    """One message resource as the simulator holds it."""

    sid: str
    seq: int
    account_sid: str
    direction: str
    to: str
    from_: str | None
    body: str
    status: str
    media: list[dict[str, str]] = field(default_factory=list)
    messaging_service_sid: str | None = None
    status_callback: str | None = None
    error_code: int | None = None
    error_message: str | None = None
    price: str | None = None
    date_created: datetime = field(default_factory=now)
    date_updated: datetime = field(default_factory=now)
    date_sent: datetime | None = None
    params: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def segments(self) -> int:
        """Segments of the body as first sent (redaction does not change the count)."""
        return int(self.params.get("_segments", num_segments(self.body)))

    def set_status(self, status: str, error_code: int | None = None) -> None:
        """Moves to `status`, recording the change."""
        moment = now()
        self.status = status
        self.date_updated = moment
        if error_code is not None:
            self.error_code = error_code
            self.error_message = ERROR_MESSAGES.get(error_code)
        if status in ("sent", "received") and self.date_sent is None:
            self.date_sent = moment
        if status in ("sent", "received", "undelivered", "delivered") and self.price is None:
            cost = MMS_PRICE if self.media else SMS_SEGMENT_PRICE * self.segments
            self.price = f"-{cost:.5f}"
        self.history.append({"status": status, "error_code": error_code, "at": rfc2822(moment)})

    def uri(self) -> str:
        """The resource's path, as Twilio puts it in `uri`."""
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{self.sid}.json"

    def to_twilio(self) -> dict[str, Any]:
        """The resource exactly as Twilio's REST API returns it."""
        base = self.uri()[: -len(".json")]
        return {
            "account_sid": self.account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": rfc2822(self.date_created),
            "date_sent": rfc2822(self.date_sent),
            "date_updated": rfc2822(self.date_updated),
            "direction": self.direction,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": str(len(self.media)),
            "num_segments": str(self.segments),
            "price": self.price,
            "price_unit": PRICE_UNIT,
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {"media": f"{base}/Media.json", "feedback": f"{base}/Feedback.json"},
            "to": self.to,
            "uri": self.uri(),
        }

    def to_sim(self) -> dict[str, Any]:
        """The resource plus what only the simulator knows: create params and status history."""
        data = self.to_twilio()
        data["media"] = list(self.media)
        data["status_callback"] = self.status_callback
        data["params"] = {k: v for k, v in self.params.items() if not k.startswith("_")}
        data["history"] = list(self.history)
        return data
