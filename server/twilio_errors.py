"""Twilio's short descriptions of the error codes outbound messages most often end with (GetDeliveryStats).

A table shipped with the server rather than a call to Twilio: the dashboard names its top error codes without a
network round trip, and a code missing here is shown by number only. The wording follows the titles of Twilio's
error dictionary (https://www.twilio.com/docs/api/errors), shortened to at most 80 characters.
"""

from __future__ import annotations

from typing import Final

# Twilio error code -> its short description (the title in Twilio's error dictionary).
DESCRIPTIONS: Final[dict[int, str]] = {
    # 2xxxx: the REST API refused the request (Messages create).
    21211: "Invalid 'To' phone number",
    21408: "Permission to send an SMS has not been enabled for the region",
    21606: "The 'From' phone number is not a valid, message-capable Twilio number",
    21608: "The 'To' number is not verified (trial accounts send to verified numbers only)",
    21610: "Attempt to send to unsubscribed recipient (the contact replied STOP)",
    21611: "This 'From' number has exceeded the maximum number of queued messages",
    21612: "Message cannot be sent with the current combination of 'To' and 'From'",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit",
    21619: "A text message body or media URL is required",
    21621: "The 'From' number has not been enabled for MMS",
    21635: "'To' number cannot be a landline",
    # 3xxxx: the message was accepted, then failed or was not delivered (status callbacks).
    30001: "Queue overflow",
    30002: "Account suspended",
    30003: "Unreachable destination handset",
    30004: "Message blocked",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered (carrier violation)",
    30008: "Unknown error",
    30009: "Missing segment",
    30010: "Message price exceeds max price",
    30017: "Carrier network congestion",
    30018: "Destination carrier requires sender ID pre-registration",
    30019: "Content size exceeds carrier limit",
    30022: "US A2P 10DLC: rate limits exceeded",
    30023: "US A2P 10DLC: daily message cap reached",
    30024: "Numeric sender ID not provisioned on carrier",
    30032: "Toll-free number has not been verified",
    30034: "US A2P 10DLC: message from an unregistered number",
}


def description(code: int) -> str:
    """Twilio's short description of `code`; empty for a code the table does not hold."""
    return DESCRIPTIONS.get(code, "")
