"""Phone numbers: everything is stored and compared in E.164."""

from __future__ import annotations

import phonenumbers

from server.errors import FailedPrecondition, InvalidArgument
from server.limits import quote
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
        raise InvalidArgument(field, f"{quote(text)} is not a valid phone number", Reason.INVALID_PHONE_NUMBER)
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


ALL_COUNTRIES = "*"


def check_destination(e164: str, allowed_countries: tuple[str, ...], allow_premium: bool) -> None:
    """The toll-fraud guard ("SMS pumping") on an outbound number already in E.164.

    FailedPrecondition unless the number's country is among `allowed_countries` ("*" allows every one) and,
    unless `allow_premium`, it is not a premium-rate number. Country and type come from phonenumbers' metadata,
    so +1 numbers outside the US and Canada (the Caribbean, where pumping often goes) are told apart.
    """
    number = phonenumbers.parse(e164)
    if ALL_COUNTRIES not in allowed_countries:
        # "001" for the non-geographic ranges (+800, +882, ...), None when no country has the number.
        country = phonenumbers.region_code_for_number(number) or "unknown"
        if country not in allowed_countries:
            raise FailedPrecondition(
                f"sending to this country ({country}) is not allowed; see SMS_ALLOWED_COUNTRIES",
                Reason.DESTINATION_COUNTRY_NOT_ALLOWED,
                country=country,
            )
    if not allow_premium and phonenumbers.number_type(number) == phonenumbers.PhoneNumberType.PREMIUM_RATE:
        raise FailedPrecondition(
            "premium-rate numbers are refused; see SMS_ALLOW_PREMIUM_NUMBERS", Reason.PREMIUM_RATE_NUMBER
        )
