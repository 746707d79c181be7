"""Phone numbers: everything is stored and compared in E.164."""

from __future__ import annotations

import phonenumbers

from server.errors import InvalidArgument
from server.reasons import Reason


def to_e164(raw: str, default_region: str, field: str = "to") -> str:
    """`raw` in E.164; InvalidArgument naming `field` when it cannot be a real number."""
    text = raw.strip()
    if not text:
        raise InvalidArgument(field, "a phone number is required", Reason.INVALID_PHONE_NUMBER)
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidArgument(field, f"not a phone number: {exc}", Reason.INVALID_PHONE_NUMBER) from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidArgument(field, f"{text!r} is not a valid phone number", Reason.INVALID_PHONE_NUMBER)
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def normalise_lenient(raw: str, default_region: str) -> str:
    """E.164 when `raw` parses, else `raw` unchanged (Twilio's own values, short codes, sender ids)."""
    try:
        number = phonenumbers.parse(raw, default_region)
    except phonenumbers.NumberParseException:
        return raw
    if not phonenumbers.is_possible_number(number):
        return raw
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
