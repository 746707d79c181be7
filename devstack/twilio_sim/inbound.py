"""Inbound messages: an injection request made into a received message, and the webhook Twilio posts for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from devstack.twilio_sim.shapes import API_VERSION, MAX_MEDIA, Message, new_sid, num_segments
from devstack.twilio_sim.state import AccountState

# Twilio reports where a number is registered; the simulator fakes it per country calling code.
_GEO: dict[str, dict[str, str]] = {
    "+1": {"City": "SAN FRANCISCO", "State": "CA", "Zip": "94105", "Country": "US"},
    "+44": {"City": "", "State": "", "Zip": "", "Country": "GB"},
}
_GEO_KEYS = ("Country", "State", "City", "Zip")


@dataclass(frozen=True)
class Injection:
    """A received message, where its webhook goes, and whether to post it at all."""

    message: Message
    url: str
    deliver: bool


def parse_injection(data: Any, state: AccountState, default_url: str) -> Injection:
    """Reads the control API's inbound request; raises ValueError saying what is wrong."""
    if not isinstance(data, dict):
        raise ValueError("body must be a JSON object")
    from_ = data.get("from")
    to = data.get("to") or state.identity.our_number
    body = data.get("body", "")
    media = data.get("media", [])
    url = data.get("url") or default_url
    deliver = data.get("deliver", True)
    if not isinstance(from_, str) or not from_:
        raise ValueError("from is required")
    if not isinstance(to, str) or not isinstance(body, str) or not isinstance(url, str):
        raise ValueError("to, body and url must be strings")
    if not isinstance(deliver, bool):
        raise ValueError("deliver must be true or false")
    if (
        not isinstance(media, list)
        or len(media) > MAX_MEDIA
        or not all(isinstance(m, dict) and isinstance(m.get("url"), str) for m in media)
    ):
        raise ValueError(f"media must be a list of at most {MAX_MEDIA} objects with a url")
    message = Message(
        sid=new_sid("MM" if media else "SM"),
        seq=state.new_seq(),
        account_sid=state.identity.account_sid,
        direction="inbound",
        to=to,
        from_=from_,
        body=body,
        status="receiving",
        media=[{"url": m["url"], "content_type": str(m.get("content_type") or "image/jpeg")} for m in media],
        messaging_service_sid=state.identity.messaging_service_sid,
        params={"_segments": num_segments(body)},
    )
    message.set_status("received")
    return Injection(message, url, deliver)


def webhook_params(message: Message) -> dict[str, str]:
    """The form Twilio posts to a number's inbound webhook for `message`."""
    params: dict[str, str] = {}
    for side, number in (("To", message.to), ("From", message.from_ or "")):
        geo = _geo(number)
        for key in _GEO_KEYS:
            if geo.get(key):
                params[side + key] = geo[key]
    params.update(
        MessageSid=message.sid,
        SmsSid=message.sid,
        SmsMessageSid=message.sid,
        AccountSid=message.account_sid,
        From=message.from_ or "",
        To=message.to,
        Body=message.body,
        NumMedia=str(len(message.media)),
        NumSegments=str(message.segments),
        SmsStatus="received",
        ApiVersion=API_VERSION,
    )
    if message.messaging_service_sid:
        params["MessagingServiceSid"] = message.messaging_service_sid
    for i, item in enumerate(message.media):
        params[f"MediaUrl{i}"] = item["url"]
        params[f"MediaContentType{i}"] = item["content_type"]
    return params


def _geo(number: str) -> dict[str, str]:
    for prefix in sorted(_GEO, key=len, reverse=True):
        if number.startswith(prefix):
            return _GEO[prefix]
    return {}
