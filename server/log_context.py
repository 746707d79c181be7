"""Correlation fields of log lines, kept in a context variable so every line of one call, job or post carries them.

A field is bound where it becomes known (`bind`, restored when its block ends) and read by the log formatters
(server/logs.py) at the moment a line is written. asyncio copies the context into every task it creates, so a
field bound around an `await` follows the work into the tasks it starts, and never leaks into another call's.

Fields (`FIELDS`): `message_id`, `twilio_sid`, `request_id` (Send's idempotency key), `conversation_id`,
`grpc_method`, and `trace_id`: one id per request across processes (the gRPC metadata key `x-request-id`,
which the webhook bridge fills from Twilio's `I-Twilio-Idempotency-Token`).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from types import MappingProxyType

FIELDS = ("message_id", "twilio_sid", "request_id", "conversation_id", "grpc_method", "trace_id")
# The gRPC metadata key that carries a trace id from one process to the next.
REQUEST_ID_KEY = "x-request-id"
# A caller-supplied id is logged only within this bound, so a client cannot flood or forge log lines.
MAX_ID_CHARS = 128

_EMPTY: Mapping[str, str] = MappingProxyType({})
# One immutable mapping per context: binding replaces it, so a copy taken by a task never changes under it.
_fields: ContextVar[Mapping[str, str]] = ContextVar("sms_log_fields", default=_EMPTY)


def _merged(fields: Mapping[str, object]) -> Mapping[str, str]:
    """The current fields updated with `fields` (None or "" leaves a field as it is); unknown names raise."""
    unknown = set(fields) - set(FIELDS)
    if unknown:
        raise TypeError(f"unknown log field(s): {', '.join(sorted(unknown))}")
    merged = dict(_fields.get())
    merged.update({name: str(value) for name, value in fields.items() if value is not None and value != ""})
    return MappingProxyType(merged)


@contextmanager
def bind(**fields: object) -> Iterator[None]:
    """Sets `fields` (str() of each value; None or "" are skipped) for the block, then restores the ones before.

    Also ends any field that `add` set inside the block.
    """
    token = _fields.set(_merged(fields))
    try:
        yield
    finally:
        try:
            _fields.reset(token)
        except ValueError:
            # Closed from another context (an async generator finalised elsewhere): the context the fields were
            # set in is not this one, so there is nothing here to restore.
            pass


def add(**fields: object) -> None:
    """Sets `fields` for the rest of the enclosing `bind` block (or of the task when there is none).

    For a value learnt deep inside a call whose outer lines should carry it too: the worker learns Twilio's sid
    in the middle of a job run, the bridge a post's MessageSid only once its handler has read the body.
    """
    _fields.set(_merged(fields))


def current() -> dict[str, str]:
    """The fields set in this context, by name."""
    return dict(_fields.get())


def bounded_id(value: object) -> str | None:
    """`value` if it may be logged as an id from outside: a str of 1..MAX_ID_CHARS visible ASCII chars, else None."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_CHARS:
        return None
    return value if all("!" <= c <= "~" for c in value) else None


def new_trace_id() -> str:
    """A fresh trace id: short, random, and distinct enough to follow one request through the logs."""
    return secrets.token_hex(8)


def trace_id_from(value: object) -> str:
    """The caller's trace id when it is well formed (`bounded_id`), else a fresh one."""
    return bounded_id(value) or new_trace_id()


def for_call(method: str, metadata: Iterable[tuple[str, str | bytes]] | None) -> AbstractContextManager[None]:
    """Binds `grpc_method` and `trace_id` for one gRPC call: the first `x-request-id` of `metadata` when it is
    well formed, else a fresh id, so every line of a call can be found, and across processes when the caller
    passed its own id. Use as `with for_call(name, context.invocation_metadata()): ...`."""
    given = next((value for key, value in metadata or () if key.lower() == REQUEST_ID_KEY), None)
    return bind(grpc_method=method, trace_id=trace_id_from(given))
