"""The arq queue that carries `send_message(message_id)` jobs to the worker."""

from __future__ import annotations

import logging
from datetime import datetime

from arq.connections import ArqRedis
from arq.constants import job_key_prefix

log = logging.getLogger(__name__)

SEND_JOB = "send_message"


class SendQueue:
    """Enqueues sends with the message id as arq's job id, so a message is queued at most once."""

    def __init__(self, arq: ArqRedis, queue_name: str) -> None:
        self.arq = arq
        self.queue_name = queue_name

    async def enqueue(self, message_id: str, defer_until: datetime | None = None) -> bool:
        """Queues the send (to run at `defer_until`, a SCHEDULED message's time); True when a new job was queued.

        False when the message's job already exists (waiting, deferred for a retry, or running: arq refuses a
        second job with the same id) or when Redis failed; a stored message whose job is lost is re-enqueued
        by the reconciler, so a failure here loses nothing.
        """
        try:
            job = await self.arq.enqueue_job(
                SEND_JOB, message_id, _job_id=message_id, _queue_name=self.queue_name, _defer_until=defer_until
            )
        except Exception:
            log.exception("enqueue of %s failed; the reconciler will pick it up", message_id)
            return False
        return job is not None

    async def drop(self, message_id: str) -> None:
        """Removes the send job of a canceled message, e.g. one deferred to a scheduled time days ahead.

        Best effort: a job left behind (Redis failed) finds the message CANCELED and does nothing.
        """
        try:
            await self.arq.zrem(self.queue_name, message_id)
            await self.arq.delete(job_key_prefix + message_id)
        except Exception:
            log.warning("removing the job of canceled message %s failed; it will find the message canceled", message_id)
