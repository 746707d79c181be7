"""SyncFromTwilio: pages through Twilio's list of our messages for a time window and upserts them by sid.

Only messages to or from our own sender are read: with TWILIO_FROM_NUMBER, Twilio's list is asked twice, From
and To that number, a page of each in turn; with a Messaging Service (which Twilio's list cannot filter by),
every message of the window is read and those of other services or numbers are skipped. Inbound messages whose
webhook never arrived are created (Gateway.record_inbound dedupes on the sid); outbound statuses move forward by
the usual ranks (Gateway.change_status). Outbound messages Twilio knows but we never stored a sid for are left to
the worker, which settles its own in-flight attempts.

A run reads at most SMS_SYNC_MAX_PAGES list pages and stops at SMS_SYNC_DEADLINE_SECONDS (Twilio's list may name
next pages without end); one that stops early says why and how far back it got.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from server import status as st
from server.config import Config
from server.errors import InvalidArgument
from server.gateway import Gateway
from server.store import Store
from server.worker.twilio_client import TwilioClient, TwilioMessage, TwilioPage

log = logging.getLogger(__name__)

SYNC_PAGE_SIZE = 200


class SyncStop(StrEnum):
    """Why a run stopped before reading its whole window."""

    PAGE_LIMIT = "page_limit"
    DEADLINE = "deadline"


@dataclass
class SyncResult:
    """What one sync saw and changed, and how far it got.

    `reached`: every message of ours sent between it and the window's end was read (the list runs newest
    first); the window's start when `complete`.
    """

    reached: datetime
    scanned: int = 0
    created: int = 0
    updated: int = 0
    stopped: SyncStop | None = None

    @property
    def complete(self) -> bool:
        return self.stopped is None


@dataclass
class _Cursor:
    """One of our lists, read page by page: how far back it got, and whether it ended."""

    pages: AsyncIterator[TwilioPage]
    reached: datetime
    done: bool = False


@dataclass
class _Run:
    """One sync run's window, budget (pages, deadline) and result."""

    cfg: Config
    store: Store
    gateway: Gateway
    start: datetime
    end: datetime
    pages_left: int
    deadline: float
    result: SyncResult = field(init=False)

    def __post_init__(self) -> None:
        self.result = SyncResult(reached=self.start)

    def over(self) -> SyncStop | None:
        """The budget that ran out, if one did."""
        if time.monotonic() >= self.deadline:
            return SyncStop.DEADLINE
        if self.pages_left <= 0:
            return SyncStop.PAGE_LIMIT
        return None

    async def read(self, cursors: list[_Cursor]) -> None:
        """Reads the lists a page each in turn (so all move back in time together) until all end or the budget."""
        while any(not c.done for c in cursors):
            for c in cursors:
                if c.done:
                    continue
                stop = self.over() or await self._advance(c)
                if stop is not None:
                    self.result.stopped = stop
                    return

    async def _advance(self, c: _Cursor) -> SyncStop | None:
        """Reads and upserts the list's next page; the budget that ran out meanwhile, if one did."""
        page = await self._next_page(c.pages)
        if page is None:
            return SyncStop.DEADLINE
        for m in page.messages:
            if time.monotonic() >= self.deadline:
                return SyncStop.DEADLINE
            await self._one(m)
            if m.moment is not None:
                # Read, whether ours or not: the list is covered back to here (never before the window).
                c.reached = max(min(c.reached, m.moment), self.start)
        if not page.more:
            c.done, c.reached = True, self.start
        return None

    async def _next_page(self, pages: AsyncIterator[TwilioPage]) -> TwilioPage | None:
        """The list's next page, or None when the deadline comes first (twilio's own bound is longer)."""
        self.pages_left -= 1
        try:
            return await asyncio.wait_for(anext(pages), self.deadline - time.monotonic())
        except TimeoutError:
            return None

    async def _one(self, m: TwilioMessage) -> None:
        """Upserts one listed message when it is ours and in the window."""
        moment = m.moment
        # Twilio may filter by day only; keep to the asked window ourselves.
        if moment is None or not (self.start.replace(microsecond=0) <= moment <= self.end) or not ours(self.cfg, m):
            return
        self.result.scanned += 1
        if m.direction == "inbound":
            if await _inbound(self.gateway, m):
                self.result.created += 1
        elif await _outbound(self.store, self.gateway, m):
            self.result.updated += 1


def ours(cfg: Config, m: TwilioMessage) -> bool:
    """Whether `m` was sent by or to our sender (the From number, else the Messaging Service)."""
    if cfg.twilio_from_number:
        return cfg.twilio_from_number in (m.from_, m.to)
    return bool(cfg.twilio_messaging_service_sid) and m.messaging_service_sid == cfg.twilio_messaging_service_sid


def _our_lists(cfg: Config) -> list[dict[str, str]]:
    """The list filters that select our messages as far as Twilio's list can (it has no service filter)."""
    if cfg.twilio_from_number:
        return [{"from_": cfg.twilio_from_number}, {"to": cfg.twilio_from_number}]
    return [{}]


async def sync_window(
    cfg: Config, store: Store, gateway: Gateway, twilio: TwilioClient, start: datetime, end: datetime
) -> SyncResult:
    """Upserts our Twilio messages sent in [start, end] within the run's budget; raises TwilioFailure when Twilio
    cannot be read."""
    run = _Run(cfg, store, gateway, start, end, cfg.sync_max_pages, time.monotonic() + cfg.sync_deadline_seconds)
    async with contextlib.AsyncExitStack() as stack:
        cursors = [
            _Cursor(await stack.enter_async_context(contextlib.aclosing(_pages(twilio, f, start, end))), reached=end)
            for f in _our_lists(cfg)
        ]
        await run.read(cursors)
    result = run.result
    # Each list runs newest first; the window is covered back to where the least advanced one got.
    result.reached = max(c.reached for c in cursors)
    _log(result, start, end)
    return result


def _pages(
    twilio: TwilioClient, filters: dict[str, str], start: datetime, end: datetime
) -> AsyncGenerator[TwilioPage, None]:
    # twilio-python sends whole seconds: widen the asked window to them, then keep to [start, end] (_Run._one).
    return twilio.pages(
        **filters,
        sent_after=start.replace(microsecond=0),
        sent_before=end.replace(microsecond=0) + timedelta(seconds=1),
        page_size=SYNC_PAGE_SIZE,
    )


def _log(result: SyncResult, start: datetime, end: datetime) -> None:
    counts = f"scanned {result.scanned}, created {result.created}, updated {result.updated}"
    window = f"{start.isoformat()}..{end.isoformat()}"
    if result.complete:
        log.info("sync %s: %s", window, counts)
    else:
        log.warning(
            "sync %s stopped early (%s): %s; read back to %s only", window, result.stopped, counts, result.reached
        )


async def _inbound(gateway: Gateway, m: TwilioMessage) -> bool:
    """Creates an inbound message the webhook never delivered; True when it was new."""
    if not m.from_ or not m.to:
        return False
    # Media of a synced message is not fetched (one more request per message); the body is kept.
    _, replay = await gateway.record_inbound(
        m.sid,
        m.from_,
        m.to,
        m.body,
        [],
        m.segments or 1,
        {"SyncedFrom": "twilio-list"},
        m.moment,
        # Tagged with the service, an inbound lands in the conversation the webhook would have chosen.
        messaging_service_sid=m.messaging_service_sid,
    )
    return not replay


async def _outbound(store: Store, gateway: Gateway, m: TwilioMessage) -> bool:
    """Moves a known outbound message's status forward; True when it moved."""
    doc = await store.find_by_sid(m.sid)
    if doc is None:
        return False
    try:
        new = st.parse_status(m.status)
    except InvalidArgument:
        return False
    if not st.moves(doc["status"], new):
        return False  # nothing newer; an older status would only add noise to the history
    _, applied = await gateway.change_status(doc, new, error_code=m.error_code, error_message=m.error_message)
    return applied
