"""Misbehaviour rules of the Twilio simulator: parsing, validation and the JSON form served by /_sim/rules.

The JSON shape (every key optional; an empty object or empty string means a well-behaved Twilio):

    {
      "seed": 7,                       # seeds the random choices (rates, shuffle); omit for a random seed
      "latency_ms": 0,                 # added to every REST call (not to /_sim/ or /healthz)
      "rate_429": 0.0,                 # probability that a create answers 429 / code 20429
      "rate_500": 0.0,                 # probability that a create answers 500 / code 20500
      "burst_429": 0,                  # the next N creates answer 429 (counts down; checked before rates)
      "burst_500": 0,                  # the next N creates answer 500 (after burst_429 is used up)
      "create_errors": {"+15005550001": 21211, "+15005550004": 21610},
      "outcomes": {"+15005550010": "undelivered",
                   "+15005550011": {"status": "failed", "error_code": 30008}},
      "lifecycle_ms": {"accepted": 10, "queued": 20, "sending": 30, "sent": 50},
      "callbacks": {"order": "in_order", "copies": 1, "max_concurrency": 16, "retry_backoff_ms": 50},
      "default_status_callback": null, # used for creates that carry no StatusCallback
      "messaging_service_from": "+15005550006",
      "read_errors": {"status": 429, "after": 0, "count": 0, "message": null},
      "endless_list": false
    }

- `create_errors` maps a To number to a Twilio error code; the create answers that code's HTTP status (400
  for 21211, 21408, 21610, 21611, 21614 and any other 2xxxx) with the legacy error body.
- `outcomes` maps a To number to the final status of its messages: "delivered" (default), "undelivered"
  (error 30003 unless given) or "failed" (error 30008 unless given). A failed message goes queued → sending →
  failed; an undelivered one goes queued → sending → sent → undelivered.
- `lifecycle_ms` is the time a message spends in each status before it moves on.
- `callbacks.order`: "in_order" posts each status callback as the status changes (one message's callbacks
  never overtake each other); "reverse" and "shuffle" hold a message's callbacks until its final status and
  then post them reversed or shuffled. `copies` posts every callback that many times, all with the same
  I-Twilio-Idempotency-Token, as Twilio's at-least-once delivery may. `max_concurrency` bounds the posts in
  flight; `retry_backoff_ms` is the pause before retry n (multiplied by n).
- `read_errors` makes reads fail: list pages (the first and every next page) and message fetches answer
  `status` with Twilio's error JSON: 401 (20003, with the Basic auth challenge), 403 (20403), 429 (20429), 500
  (20500) or 503 (20503); 0 or omitted is off. twilio-python raises a failed page as a bare TwilioException
  carrying the response, a failed fetch as TwilioRestException. The first `after` reads since the rules were set
  answer normally (1: the first page works and the next one fails), then `count` reads fail (0: every one
  until the rules change). `message` replaces Twilio's error text, e.g. with a long one.
- `endless_list`: every list page names a next page, also past the last message (those pages are empty), as a
  list that pages without end.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

LIFECYCLE_STATUSES = ("accepted", "queued", "sending", "sent")
FINAL_STATUSES = ("delivered", "undelivered", "failed")
DEFAULT_OUTCOME_CODES = {"delivered": None, "undelivered": 30003, "failed": 30008}
CALLBACK_ORDERS = ("in_order", "reverse", "shuffle")
# What a failed read answers, by HTTP status: Twilio's error code and text.
READ_ERROR_CODES: dict[int, tuple[int, str]] = {
    401: (20003, "Authenticate"),
    403: (20403, "Forbidden"),
    429: (20429, "Too Many Requests"),
    500: (20500, "An internal server error has occurred"),
    503: (20503, "Service Unavailable"),
}


class RulesError(ValueError):
    """The rules JSON is malformed; the message says which key."""


@dataclass(frozen=True)
class Outcome:
    """The final status a destination's messages reach, with its error code."""

    status: str = "delivered"
    error_code: int | None = None


@dataclass(frozen=True)
class CallbackRules:
    """How status callbacks are posted."""

    order: str = "in_order"
    copies: int = 1
    max_concurrency: int = 16
    retry_backoff_ms: int = 50


@dataclass(frozen=True)
class ReadErrors:
    """Which reads (list pages and fetches) fail, and how; `status` 0 is off."""

    status: int = 0
    after: int = 0
    count: int = 0
    message: str | None = None

    def fails(self, read: int) -> bool:
        """Whether read number `read` (0-based, counted since the rules were set) fails."""
        return bool(self.status) and read >= self.after and (self.count == 0 or read < self.after + self.count)


@dataclass(frozen=True)
class Rules:
    """One immutable set of rules; the simulator swaps the whole object when it changes."""

    seed: int | None = None
    latency_ms: int = 0
    rate_429: float = 0.0
    rate_500: float = 0.0
    burst_429: int = 0
    burst_500: int = 0
    create_errors: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    lifecycle_ms: dict[str, int] = field(
        default_factory=lambda: {"accepted": 10, "queued": 20, "sending": 30, "sent": 50}
    )
    callbacks: CallbackRules = field(default_factory=CallbackRules)
    default_status_callback: str | None = None
    messaging_service_from: str = "+15005550006"
    read_errors: ReadErrors = field(default_factory=ReadErrors)
    endless_list: bool = False

    def outcome_for(self, to: str) -> Outcome:
        """The final outcome for messages to `to`."""
        return self.outcomes.get(to, Outcome())

    def with_bursts(self, burst_429: int, burst_500: int) -> Rules:
        """A copy with the burst counters replaced (they count down as creates consume them)."""
        return replace(self, burst_429=burst_429, burst_500=burst_500)

    def to_json(self) -> dict[str, Any]:
        """The rules in the same JSON shape `parse_rules` reads."""
        data = asdict(self)
        data["outcomes"] = {to: asdict(o) for to, o in self.outcomes.items()}
        return data


def _int(data: dict[str, Any], key: str, default: int, minimum: int = 0) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RulesError(f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _rate(data: dict[str, Any], key: str) -> float:
    value = data.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise RulesError(f"{key} must be a number between 0 and 1, got {value!r}")
    return float(value)


def _outcome(to: str, raw: Any) -> Outcome:
    if isinstance(raw, str):
        raw = {"status": raw}
    if not isinstance(raw, dict):
        raise RulesError(f"outcomes[{to!r}] must be a status or an object, got {raw!r}")
    status = raw.get("status", "delivered")
    if status not in FINAL_STATUSES:
        raise RulesError(f"outcomes[{to!r}].status must be one of {FINAL_STATUSES}, got {status!r}")
    code = raw.get("error_code", DEFAULT_OUTCOME_CODES[status])
    if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
        raise RulesError(f"outcomes[{to!r}].error_code must be an integer, got {code!r}")
    return Outcome(status=status, error_code=code)


def _callbacks(raw: Any) -> CallbackRules:
    if not isinstance(raw, dict):
        raise RulesError(f"callbacks must be an object, got {raw!r}")
    unknown = set(raw) - {"order", "copies", "max_concurrency", "retry_backoff_ms"}
    if unknown:
        raise RulesError(f"unknown keys in callbacks: {sorted(unknown)}")
    order = raw.get("order", "in_order")
    if order not in CALLBACK_ORDERS:
        raise RulesError(f"callbacks.order must be one of {CALLBACK_ORDERS}, got {order!r}")
    return CallbackRules(
        order=order,
        copies=_int(raw, "copies", 1, minimum=1),
        max_concurrency=_int(raw, "max_concurrency", 16, minimum=1),
        retry_backoff_ms=_int(raw, "retry_backoff_ms", 50),
    )


def _read_errors(raw: Any) -> ReadErrors:
    if not isinstance(raw, dict):
        raise RulesError(f"read_errors must be an object, got {raw!r}")
    unknown = set(raw) - set(ReadErrors.__dataclass_fields__)
    if unknown:
        raise RulesError(f"unknown keys in read_errors: {sorted(unknown)}")
    status = _int(raw, "status", 0)
    if status and status not in READ_ERROR_CODES:
        raise RulesError(f"read_errors.status must be 0 or one of {sorted(READ_ERROR_CODES)}, got {status!r}")
    message = raw.get("message")
    if message is not None and not isinstance(message, str):
        raise RulesError("read_errors.message must be a string or null")
    return ReadErrors(status=status, after=_int(raw, "after", 0), count=_int(raw, "count", 0), message=message)


def parse_rules(data: Any) -> Rules:
    """Validates a decoded rules object and builds `Rules`; raises RulesError."""
    if data is None:
        return Rules()
    if not isinstance(data, dict):
        raise RulesError("rules must be a JSON object")
    known = set(Rules.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise RulesError(f"unknown rule keys: {sorted(unknown)}")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise RulesError(f"seed must be an integer, got {seed!r}")
    errors = data.get("create_errors", {})
    if not isinstance(errors, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in errors.items()
    ):
        raise RulesError("create_errors must map To numbers to integer error codes")
    outcomes = data.get("outcomes", {})
    if not isinstance(outcomes, dict):
        raise RulesError("outcomes must map To numbers to outcomes")
    lifecycle = dict(Rules().lifecycle_ms)
    raw_lifecycle = data.get("lifecycle_ms", {})
    if not isinstance(raw_lifecycle, dict):
        raise RulesError("lifecycle_ms must be an object")
    for key in raw_lifecycle:
        if key not in LIFECYCLE_STATUSES:
            raise RulesError(f"lifecycle_ms keys are {LIFECYCLE_STATUSES}, got {key!r}")
        lifecycle[key] = _int(raw_lifecycle, key, 0)
    callback_url = data.get("default_status_callback")
    if callback_url is not None and not isinstance(callback_url, str):
        raise RulesError("default_status_callback must be a URL string or null")
    ms_from = data.get("messaging_service_from", Rules.messaging_service_from)
    if not isinstance(ms_from, str) or not ms_from:
        raise RulesError("messaging_service_from must be a phone number")
    endless = data.get("endless_list", False)
    if not isinstance(endless, bool):
        raise RulesError(f"endless_list must be true or false, got {endless!r}")
    return Rules(
        seed=seed,
        latency_ms=_int(data, "latency_ms", 0),
        rate_429=_rate(data, "rate_429"),
        rate_500=_rate(data, "rate_500"),
        burst_429=_int(data, "burst_429", 0),
        burst_500=_int(data, "burst_500", 0),
        create_errors=dict(errors),
        outcomes={to: _outcome(to, raw) for to, raw in outcomes.items()},
        lifecycle_ms=lifecycle,
        callbacks=_callbacks(data.get("callbacks", {})),
        default_status_callback=callback_url or None,
        messaging_service_from=ms_from,
        read_errors=_read_errors(data.get("read_errors", {})),
        endless_list=endless,
    )


def load_rules(source: str) -> Rules:
    """Rules from `source`: empty, a JSON object as text, or the path of a JSON file."""
    text = source.strip()
    if not text:
        return Rules()
    if not text.startswith("{"):
        path = Path(text)
        try:
            text = path.read_text()
        except OSError as exc:
            raise RulesError(f"cannot read rules file {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RulesError(f"rules are not valid JSON: {exc}") from None
    return parse_rules(data)
