"""Logging of every process (server, worker, bridge, simulator, dev stack): one handler on the root logger.

`configure(cfg)` picks the format from SMS_LOG_FORMAT:
- "text" (default, the dev console): `time LEVEL logger: message [field=value ...]`, the correlation fields
  (server/log_context.py) appended only when set;
- "json": one object per line, `{"time", "level", "logger", "message", <the fields that are set>, "exception"}`,
  `time` ISO 8601 in UTC with milliseconds, `exception` only when the line has one.

Privacy: `MaskPhoneNumbers` rewrites anything that looks like a phone number to its last 4 digits before any
format sees the line; bodies, tokens and secrets are never passed to a log call in the first place.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from server import log_context

if TYPE_CHECKING:
    from server.config import Config

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The attribute a record's correlation fields are stamped on, as the context was when the line was logged.
FIELDS_ATTR = "log_fields"
# Fields a caller hands in: the ones our own code binds are ids it made or bounded; these two come from outside.
CALLER_FIELDS = ("request_id", "trace_id")

# E.164 (`+` and 8 to 15 digits), or any other run of 10 or more digits. Runs touching a letter or digit are
# part of an id (ObjectIds and Twilio sids are hex and often hold long digit runs) and are left alone.
_PHONE = re.compile(r"(?<![0-9A-Za-z])(?:\+\d{8,15}|\d{10,})(?![0-9A-Za-z])")


def _mask_match(match: re.Match[str]) -> str:
    number = match.group()
    plus = "+" if number.startswith("+") else ""
    digits = number[len(plus) :]
    return plus + "*" * (len(digits) - 4) + digits[-4:]


def mask(text: str) -> str:
    """`text` with every phone-number-like run reduced to its last 4 digits: "+15550000123" -> "+*******0123"."""
    return _PHONE.sub(_mask_match, text)


class MaskPhoneNumbers(logging.Filter):
    """Masks phone numbers in a record's message, its string arguments and the final message they make.

    The final message is what counts: a number may arrive inside any argument (an exception from Twilio names
    the number it refused). A record holding one gets its masked final message and no arguments; one without
    keeps its template, for any other handler that groups by it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = mask(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(mask(a) if isinstance(a, str) else a for a in record.args)
        try:
            message = record.getMessage()
        except Exception:
            return True  # a malformed call: the handler reports it the usual way (handleError)
        masked = mask(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


class StampFields(logging.Filter):
    """Copies the correlation fields of the logging context onto the record, with any given through `extra=`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, FIELDS_ATTR):
            fields = log_context.current()
            for name in log_context.FIELDS:
                value = record.__dict__.get(name)
                if value is not None and value != "":
                    fields[name] = str(value)
            for name in CALLER_FIELDS:
                if name in fields:
                    fields[name] = mask(fields[name])  # a client could put a phone number in its request id
            setattr(record, FIELDS_ATTR, fields)
        return True


def _fields(record: logging.LogRecord) -> dict[str, str]:
    fields: dict[str, str] = getattr(record, FIELDS_ATTR, None) or {}
    return {name: fields[name] for name in log_context.FIELDS if name in fields}


class TextFormatter(logging.Formatter):
    """The console format, with the fields that are set after the message: ` [message_id=... grpc_method=...]`."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        # Before the traceback that format() appends, so the fields stay on the line they belong to.
        line = super().formatMessage(record)
        fields = _fields(record)
        if fields:
            line += " [" + " ".join(f"{name}={value}" for name, value in fields.items()) + "]"
        return line

    def formatException(self, ei: Any) -> str:
        return mask(super().formatException(ei))


def _utc_time(created: float) -> str:
    """ISO 8601 in UTC with milliseconds: 2026-12-04T18:41:19.123Z."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    """One JSON object per line (see the module docstring); newlines inside values are escaped by JSON."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str] = {
            "time": _utc_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = mask(record.exc_text)
        if record.stack_info:
            entry["stack"] = mask(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False)


def configure(
    cfg_or_format: Config | str, *, stream: IO[str] | None = None, level: int = logging.INFO
) -> logging.Handler:
    """Installs the process's log handler on the root logger (replacing one an earlier call installed) and
    returns it. `cfg_or_format`: a Config (its SMS_LOG_FORMAT) or "text" / "json"; `stream`: default stderr."""
    fmt = cfg_or_format if isinstance(cfg_or_format, str) else cfg_or_format.log_format
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(__name__)
    # Filters on the handler, not on a logger: a logger's filters skip the records its children propagate.
    handler.addFilter(StampFields())
    handler.addFilter(MaskPhoneNumbers())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == __name__]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(level)
    # Python's warnings through the same handler: a raw line on stderr would break "one JSON object per line".
    logging.captureWarnings(True)
    return handler
