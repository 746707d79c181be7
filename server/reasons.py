"""The `google.rpc.ErrorInfo` reasons sms-gateway sends: one enumeration, imported by the server and the bridge."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Stable, machine-readable reasons (AIP-193), in the domain ERROR_DOMAIN."""

    # Defaults of each error kind, when nothing more specific applies.
    INTERNAL = "INTERNAL"
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    UNAVAILABLE = "UNAVAILABLE"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"

    # Input.
    INVALID_PHONE_NUMBER = "INVALID_PHONE_NUMBER"
    INVALID_PAGE_TOKEN = "INVALID_PAGE_TOKEN"
    INVALID_RESUME_TOKEN = "INVALID_RESUME_TOKEN"
    # ListConversations' filter does not parse, names an unknown field, or uses an unsupported operator.
    INVALID_FILTER = "INVALID_FILTER"
    # A search query with nothing to search for, or too many words.
    INVALID_QUERY = "INVALID_QUERY"
    # A field over its bound (server/limits.py); a timestamp out of range.
    INPUT_TOO_LARGE = "INPUT_TOO_LARGE"
    INVALID_TIMESTAMP = "INVALID_TIMESTAMP"
    UNKNOWN_STATUS = "UNKNOWN_STATUS"
    REQUEST_ID_REUSED = "REQUEST_ID_REUSED"

    # Access.
    ROLE_NOT_ALLOWED = "ROLE_NOT_ALLOWED"
    CONVERSATION_OF_ANOTHER_AGENT = "CONVERSATION_OF_ANOTHER_AGENT"
    # An agent filtered by another user's assignee (`assignee = "bob"`): admins and services only.
    FILTER_NOT_ALLOWED = "FILTER_NOT_ALLOWED"
    # AssignConversation: an agent asked for a change only an admin may make (server/assignment.py).
    ASSIGNMENT_NOT_ALLOWED = "ASSIGNMENT_NOT_ALLOWED"
    # UpdateConversation by an agent who sees the conversation (an unassigned one) but is not its assignee.
    NOT_ASSIGNEE = "NOT_ASSIGNEE"
    # An update_mask path UpdateConversation does not update, or no path at all.
    INVALID_UPDATE_MASK = "INVALID_UPDATE_MASK"

    # Limits per user (RESOURCE_EXHAUSTED, with a RetryInfo) and the toll-fraud guard (FAILED_PRECONDITION).
    TOO_MANY_STREAMS = "TOO_MANY_STREAMS"
    SEND_RATE_EXCEEDED = "SEND_RATE_EXCEEDED"
    DESTINATION_COUNTRY_NOT_ALLOWED = "DESTINATION_COUNTRY_NOT_ALLOWED"
    PREMIUM_RATE_NUMBER = "PREMIUM_RATE_NUMBER"

    # What was asked for does not exist (or may not be seen).
    CONVERSATION_NOT_FOUND = "CONVERSATION_NOT_FOUND"
    MESSAGE_NOT_FOUND = "MESSAGE_NOT_FOUND"
    UNKNOWN_MESSAGE_SID = "UNKNOWN_MESSAGE_SID"

    # State.
    OPTED_OUT = "OPTED_OUT"
    # Send later: send_at in the past or beyond SMS_SCHEDULE_MAX_DAYS (INVALID_ARGUMENT).
    INVALID_SEND_TIME = "INVALID_SEND_TIME"
    # An agent asked to send during quiet hours anyway: admins and the service role only (PERMISSION_DENIED).
    QUIET_HOURS_OVERRIDE_NOT_ALLOWED = "QUIET_HOURS_OVERRIDE_NOT_ALLOWED"
    # CancelMessage: the worker has begun the attempt; the message is final, inbound or a note.
    MESSAGE_ALREADY_SENDING = "MESSAGE_ALREADY_SENDING"
    MESSAGE_NOT_CANCELABLE = "MESSAGE_NOT_CANCELABLE"
    # RetryMessage: not a FAILED or UNDELIVERED outbound message; retried already; a number that cannot receive.
    MESSAGE_NOT_RETRYABLE = "MESSAGE_NOT_RETRYABLE"
    MESSAGE_ALREADY_RETRIED = "MESSAGE_ALREADY_RETRIED"
    NUMBER_NOT_RETRYABLE = "NUMBER_NOT_RETRYABLE"
    # A claim lost: the conversation is no longer unassigned (FAILED_PRECONDITION).
    CONVERSATION_ALREADY_ASSIGNED = "CONVERSATION_ALREADY_ASSIGNED"
    # The assignee changed between the read and the write of this call (FAILED_PRECONDITION): read it again.
    ASSIGNEE_CHANGED = "ASSIGNEE_CHANGED"
    TWILIO_NOT_CONFIGURED = "TWILIO_NOT_CONFIGURED"
    # SMS_INGEST_SECRET is unset on the server: SmsIngestService refuses every call.
    INGEST_NOT_CONFIGURED = "INGEST_NOT_CONFIGURED"
    TWILIO_REFUSED = "TWILIO_REFUSED"
    # Twilio does not accept the configured TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN (HTTP 401 or 403).
    TWILIO_CREDENTIALS_REJECTED = "TWILIO_CREDENTIALS_REJECTED"

    # Retry later (UNAVAILABLE) or at once (ABORTED: a lost race).
    CONCURRENT_UPDATE = "CONCURRENT_UPDATE"
    SHUTTING_DOWN = "SHUTTING_DOWN"
    EVENT_LOG_UNAVAILABLE = "EVENT_LOG_UNAVAILABLE"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    TWILIO_UNAVAILABLE = "TWILIO_UNAVAILABLE"

    # Templates (canned replies, server/templates.py).
    # No such template, or one the caller may not see (another agent's personal one): existence is never leaked.
    TEMPLATE_NOT_FOUND = "TEMPLATE_NOT_FOUND"
    # An agent asked to create, update or delete a shared template (PERMISSION_DENIED): admins and services only.
    TEMPLATE_NOT_ALLOWED = "TEMPLATE_NOT_ALLOWED"
    # The display name is taken, in any case, among the owner's templates or the shared ones (ALREADY_EXISTS).
    TEMPLATE_NAME_TAKEN = "TEMPLATE_NAME_TAKEN"
    # The owner has the most personal templates allowed, or there are the most shared ones (FAILED_PRECONDITION).
    TEMPLATE_LIMIT_REACHED = "TEMPLATE_LIMIT_REACHED"
