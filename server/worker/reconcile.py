"""Background duties of the worker: re-enqueue sends whose job is gone, and the periodic Twilio sync.

Each duty runs in every worker process, but a Redis lock per tick lets only one process do the work, so N
workers do not multiply the database scans.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from arq.connections import ArqRedis

from server import store_metrics
from server.config import Config
from server.gateway import PENDING_GRACE, Gateway
from server.timeutil import now

log = logging.getLogger(__name__)

RECONCILE_BATCH = 500


async def reconcile_once(cfg: Config, gateway: Gateway) -> int:
    """Finishes messages whose effects were abandoned half-way, then re-enqueues lost sends.

    A message is re-enqueued when it has no sid and nobody touched it (or, SCHEDULED, it was due) for
    SMS_RECONCILE_AGE_SECONDS. The job
    id is the message id, so a message whose job still exists (waiting, deferred for a retry, or running) is
    left alone by arq; only lost jobs come back. Enqueued through the send queue, as Send does. Returns how many
    were enqueued.
    """
    store = gateway.store
    abandoned = await store.stale_pending(now() - PENDING_GRACE, RECONCILE_BATCH)
    for doc in abandoned:
        await gateway.resume_pending(doc)
    cutoff = now() - timedelta(seconds=cfg.reconcile_age_seconds)
    enqueued = 0
    # A SCHEDULED message's job waits in Redis until its time; one still SCHEDULED this long after it lost its job
    # (Redis restarted without its data, or the enqueue failed).
    owed = await store.stale_outbound(cutoff, RECONCILE_BATCH) + await store.due_scheduled(cutoff, RECONCILE_BATCH)
    for message_id in owed:
        if await gateway.queue.enqueue(message_id):
            enqueued += 1
    if enqueued:
        log.info("reconciler re-enqueued %d message(s) whose job was gone", enqueued)
    return enqueued


async def every(
    interval: float, lock_key: str, arq: ArqRedis, duty: Callable[[], Awaitable[object]], stopping: asyncio.Event
) -> None:
    """Runs `duty` every `interval` seconds in one worker of many (a Redis lock per tick) until `stopping`."""
    name = getattr(duty, "__name__", lock_key)
    # The store commands' label: the lock's own word ("reconcile", "sync"), a fixed string of our code.
    duty_word = lock_key.rsplit(":", 1)[-1].removesuffix("-lock")
    while not stopping.is_set():
        try:
            # The lock lives a little less than the interval, so the next tick can take it again.
            if await arq.set(lock_key, b"1", px=max(int(interval * 900), 1), nx=True):
                with store_metrics.stage(duty_word):
                    await duty()
        except Exception:
            log.exception("background duty %s failed; next try in %.0f s", name, interval)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval)
