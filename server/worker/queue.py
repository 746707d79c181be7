"""The arq queue that carries `send_message(message_id)` jobs to the worker."""

from __future__ import annotations

import logging

from arq.connections import ArqRedis

log = logging.getLogger(__name__)

SEND_JOB = "send_message"


class SendQueue:
    """Enqueues sends with the message id as arq's job id, so a message is queued at most once."""

    def __init__(self, arq: ArqRedis, queue_name: str) -> None:
        self.arq = arq
        self.queue_name = queue_name

    async def enqueue(self, message_id: str) -> bool:
        """Queues the send; True when a new job was queued.

        False when the message's job already exists (waiting, deferred for a retry, or running: arq refuses a
        second job with the same id) or when Redis failed; a stored message whose job is lost is re-enqueued
        by the reconciler, so a failure here loses nothing.
        """
        try:
            job = await self.arq.enqueue_job(SEND_JOB, message_id, _job_id=message_id, _queue_name=self.queue_name)
        except Exception:
            log.exception("enqueue of %s failed; the reconciler will pick it up", message_id)
            return False
        return job is not None
