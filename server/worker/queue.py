"""The arq queue that carries `send_message(message_id)` jobs to the worker."""

from __future__ import annotations

import logging
from datetime import datetime

from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms, to_unix_ms

log = logging.getLogger(__name__)

SEND_JOB = "send_message"


# arq's enqueue (WATCH, EXISTS, MULTI/EXEC: three round trips) as one script with the same effect: the job is
# written and queued only when neither it nor its result exists.
_ENQUEUE = """
if redis.call('exists', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('psetex', KEYS[1], ARGV[1], ARGV[2])
redis.call('zadd', KEYS[3], ARGV[3], ARGV[4])
return 1
"""


class SendQueue:
    """Enqueues sends with the message id as arq's job id, so a message is queued at most once."""

    def __init__(self, arq: ArqRedis, queue_name: str) -> None:
        self.arq = arq
        self.queue_name = queue_name
        self._enqueue = arq.register_script(_ENQUEUE)

    async def enqueue(self, message_id: str, defer_until: datetime | None = None) -> bool:
        """Queues the send (to run at `defer_until`, a SCHEDULED message's time); True when a new job was queued.

        False when the message's job already exists (waiting, deferred for a retry, or running: arq refuses a
        second job with the same id) or when Redis failed; a stored message whose job is lost is re-enqueued
        by the reconciler, so a failure here loses nothing.
        """
        enqueued_ms = timestamp_ms()
        score = enqueued_ms if defer_until is None else to_unix_ms(defer_until)
        try:
            job = serialize_job(SEND_JOB, (message_id,), {}, None, enqueued_ms, serializer=self.arq.job_serializer)
            keys = (job_key_prefix + message_id, result_key_prefix + message_id, self.queue_name)
            expires_ms = score - enqueued_ms + self.arq.expires_extra_ms
            created = await self._enqueue(keys=keys, args=(expires_ms, job, score, message_id))
        except Exception:
            log.exception("enqueue of %s failed; the reconciler will pick it up", message_id)
            return False
        return bool(created)

    async def drop(self, message_id: str) -> None:
        """Removes the send job of a canceled message, e.g. one deferred to a scheduled time days ahead.

        Best effort: a job left behind (Redis failed) finds the message CANCELED and does nothing.
        """
        try:
            await self.arq.zrem(self.queue_name, message_id)
            await self.arq.delete(job_key_prefix + message_id)
        except Exception:
            log.warning("removing the job of canceled message %s failed; it will find the message canceled", message_id)
