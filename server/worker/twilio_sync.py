"""SyncFromTwilio: pages through Twilio's message list for a time window and upserts by sid.

Inbound messages whose webhook never arrived are created (Gateway.record_inbound dedupes on the sid);
outbound statuses move forward by the usual ranks (Gateway.change_status). Outbound messages Twilio knows but
we never stored a sid for are left to the worker, which settles its own in-flight attempts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from server import status as st
from server.errors import InvalidArgument
from server.gateway import Gateway
from server.store import Store
from server.worker.twilio_client import TwilioClient, TwilioMessage

log = logging.getLogger(__name__)

SYNC_PAGE_SIZE = 200


@dataclass
class SyncResult:
    """What one sync saw and changed."""

    scanned: int = 0
    created: int = 0
    updated: int = 0


def _moment(m: TwilioMessage) -> datetime | None:
    return m.date_sent or m.date_created


async def sync_window(
    store: Store, gateway: Gateway, twilio: TwilioClient, start: datetime, end: datetime
) -> SyncResult:
    """Upserts every Twilio message sent in [start, end]; raises TwilioFailure when Twilio cannot be read."""
    result = SyncResult()
    # twilio-python sends whole seconds: widen the asked window to them, then keep to [start, end] below.
    async for m in twilio.messages(
        sent_after=start.replace(microsecond=0),
        sent_before=end.replace(microsecond=0) + timedelta(seconds=1),
        page_size=SYNC_PAGE_SIZE,
    ):
        moment = _moment(m)
        # Twilio may filter by day only; keep to the asked window ourselves.
        if moment is not None and not (start.replace(microsecond=0) <= moment <= end):
            continue
        result.scanned += 1
        if m.direction == "inbound":
            if await _inbound(gateway, m):
                result.created += 1
        elif await _outbound(store, gateway, m):
            result.updated += 1
    log.info(
        "sync %s..%s: scanned %d, created %d, updated %d",
        start.isoformat(),
        end.isoformat(),
        result.scanned,
        result.created,
        result.updated,
    )
    return result


async def _inbound(gateway: Gateway, m: TwilioMessage) -> bool:
    """Creates an inbound message the webhook never delivered; True when it was new."""
    if not m.from_ or not m.to:
        return False
    # Media of a synced message is not fetched (one more request per message); the body is kept.
    _, replay = await gateway.record_inbound(
        m.sid, m.from_, m.to, m.body, [], m.segments or 1, {"SyncedFrom": "twilio-list"}, _moment(m)
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
