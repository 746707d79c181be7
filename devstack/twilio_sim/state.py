"""The simulated account: who it is, its messages, the logs and counters it keeps, and the rules in force."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from devstack.twilio_sim.rules import Rules
from devstack.twilio_sim.shapes import Message
from server.config import Config

DEFAULT_ACCOUNT_SID = "AC" + "0" * 32
DEFAULT_AUTH_TOKEN = "simulator-auth-token"
DEFAULT_NUMBER = "+15005550006"

STAT_NAMES = (
    "rest_requests",
    "auth_failures",
    "creates_received",
    "creates_accepted",
    "creates_429",
    "creates_500",
    "create_errors",
    "reads",
    "read_errors",
    "callbacks_delivered",
    "callbacks_failed",
    "status_attempts",
    "status_attempts_ok",
    "inbound_delivered",
    "inbound_failed",
    "inbound_stored_only",
    "inbound_attempts",
    "inbound_attempts_ok",
)


@dataclass(frozen=True)
class Identity:
    """The account's credentials and numbers (the simulator's defaults where the config has none)."""

    account_sid: str
    auth_token: str = field(repr=False)
    our_number: str
    messaging_service_sid: str | None

    @classmethod
    def from_config(cls, cfg: Config) -> Identity:
        """The identity `cfg` asks for."""
        return cls(
            account_sid=cfg.twilio_account_sid or DEFAULT_ACCOUNT_SID,
            auth_token=cfg.twilio_auth_token or DEFAULT_AUTH_TOKEN,
            our_number=cfg.twilio_from_number or DEFAULT_NUMBER,
            messaging_service_sid=cfg.twilio_messaging_service_sid or None,
        )


class AccountState:
    """Everything the simulated account holds; the REST and control APIs and the lifecycles share it."""

    def __init__(self, identity: Identity, rules: Rules) -> None:
        self.identity = identity
        self.initial_rules = rules
        self.clear()
        self.set_rules(rules)

    def clear(self) -> None:
        """Forgets every message, log entry and counter."""
        self.messages: dict[str, Message] = {}
        # Kept when a message is deleted, so a page token naming it still places the page.
        self._seq_of: dict[str, int] = {}
        self._next_seq = 0
        self.creates: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []
        self.counters: Counter[str] = Counter()
        self.errors_by_code: Counter[int] = Counter()

    def set_rules(self, rules: Rules) -> None:
        """Puts `rules` in force (random choices restart from its seed)."""
        self.rules = rules
        self.random = random.Random(rules.seed)
        # Reads (list pages, fetches) since these rules were set: the read_errors rule counts from here.
        self._reads = 0
        # A new semaphore applies the new bound to new posts; posts in flight finish under the old one.
        self.semaphore = asyncio.Semaphore(rules.callbacks.max_concurrency)

    def new_seq(self) -> int:
        """The next message's position in the account's history."""
        self._next_seq += 1
        return self._next_seq

    def store(self, message: Message) -> None:
        """Adds (or replaces) a message."""
        self.messages[message.sid] = message
        self._seq_of[message.sid] = message.seq

    def seq_of(self, sid: str) -> int | None:
        """The position of a message ever stored, deleted or not."""
        return self._seq_of.get(sid)

    def in_order(self, newest_first: bool = False) -> list[Message]:
        """The stored messages oldest first (or newest first)."""
        return sorted(self.messages.values(), key=lambda m: m.seq, reverse=newest_first)

    def next_read(self) -> int:
        """Counts one read (a list page or a fetch); returns its number since the rules were set, from 0."""
        self.counters["reads"] += 1
        self._reads += 1
        return self._reads - 1

    def record_attempt(self, attempt: dict[str, Any]) -> None:
        """Logs one webhook attempt and counts it by kind and outcome."""
        self.attempts.append(attempt)
        self.counters[f"{attempt['kind']}_attempts"] += 1
        if attempt["status"] is not None and 200 <= attempt["status"] < 300:
            self.counters[f"{attempt['kind']}_attempts_ok"] += 1

    def stats(self, pending_callbacks: int) -> dict[str, Any]:
        """Counters: REST calls, creates by outcome, webhook deliveries and attempts."""
        data: dict[str, Any] = {name: self.counters[name] for name in STAT_NAMES}
        data["errors_by_code"] = {str(k): v for k, v in sorted(self.errors_by_code.items())}
        data["messages"] = len(self.messages)
        data["pending_callbacks"] = pending_callbacks
        return data
