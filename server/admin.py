"""The admin operations of SmsService: queue statistics and SyncFromTwilio."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from arq.connections import ArqRedis
from arq.constants import health_check_key_suffix
from google.protobuf.duration_pb2 import Duration
from sms.v1 import sms_pb2

from server import status as st
from server.config import TWILIO_SETTINGS, Config
from server.documents import MessageDoc
from server.errors import DomainError, FailedPrecondition, InvalidArgument, Unavailable
from server.gateway import Gateway
from server.limits import timestamp
from server.reasons import Reason
from server.store import Store
from server.timeutil import aware, now, to_timestamp
from server.worker.twilio_client import TwilioClient, TwilioFailure
from server.worker.twilio_sync import SyncStop, sync_window

log = logging.getLogger(__name__)


class Admin:
    """GetQueueStats and SyncFromTwilio for the gRPC server."""

    def __init__(self, cfg: Config, store: Store, arq: ArqRedis, gateway: Gateway) -> None:
        self.cfg = cfg
        self.store = store
        self.arq = arq
        self.gateway = gateway
        self._twilio: TwilioClient | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        if self._twilio is not None:
            await self._twilio.close()
            self._twilio = None

    async def queue_stats(self) -> sms_pb2.GetQueueStatsResponse:
        """Counts from MongoDB (the truth about messages) and Redis (the queue and the worker's heartbeat)."""
        t = now()
        queued, due = await self.store.waiting()
        retrying = sum(1 for d in due if d.get("retry_at"))
        in_progress = len(due) - retrying
        failed = await self.store.count_status_since(st.FAILED, t - timedelta(hours=1))
        sent_minute = await self.store.count_sent_since(t - timedelta(minutes=1))
        sent_hour = await self.store.count_sent_since(t - timedelta(hours=1))
        created = [aware(d["created"]) for d in due if d.get("created")]
        first_queued = await self.store.oldest_queued()
        if first_queued is not None:
            created.append(aware(first_queued))
        oldest = min(created, default=None)
        queue_length = int(await self.arq.zcard(self.cfg.arq_queue))
        health = await self.arq.get(self.cfg.arq_queue + health_check_key_suffix)
        age = Duration()
        if oldest is not None:
            age.FromTimedelta(max(t - oldest, timedelta(0)))
        scheduled = await self.store.count_scheduled_after(t)
        senders = self._senders(await self.store.backlog(t))
        return sms_pb2.GetQueueStatsResponse(
            scheduled=scheduled,
            senders=senders,
            queued=queued,
            in_progress=in_progress,
            retrying=retrying,
            failed_last_hour=failed,
            sent_last_minute=sent_minute,
            sent_last_hour=sent_hour,
            oldest_queued_age=age,
            queue_length=queue_length,
            # The key expires one second after arq's health-check interval, so present means fresh.
            worker_healthy=health is not None,
            worker_health=health.decode(errors="replace") if isinstance(health, bytes) else (health or ""),
        )

    def _senders(self, backlog: list[MessageDoc]) -> list[sms_pb2.SenderBacklog]:
        """Each sender's backlog and the time to drain it at SMS_SENDER_MPS (zero when unpaced)."""
        counts: dict[str, list[int]] = {}
        for doc in backlog:
            entry = counts.setdefault(doc.get("from", ""), [0, 0])
            entry[0] += 1
            entry[1] += max(1, int(doc.get("segments") or 1))
        rate = self.cfg.sender_mps
        result = []
        for sender, (messages, segments) in sorted(counts.items()):
            drain = Duration()
            if rate > 0:
                drain.FromTimedelta(timedelta(seconds=segments / rate))
            result.append(
                sms_pb2.SenderBacklog(
                    sender=sender, messages=messages, segments=segments, segments_per_second=rate, drain_time=drain
                )
            )
        return result

    async def _client(self) -> TwilioClient:
        async with self._lock:
            if self._twilio is None:
                missing = self.cfg.missing(*TWILIO_SETTINGS)
                if missing:
                    raise FailedPrecondition(
                        "SyncFromTwilio needs the server's Twilio settings: " + ", ".join(missing),
                        Reason.TWILIO_NOT_CONFIGURED,
                    )
                sender = TwilioClient(self.cfg)
                await sender.start()
                self._twilio = sender
            return self._twilio

    async def sync_from_twilio(self, request: sms_pb2.SyncFromTwilioRequest) -> sms_pb2.SyncFromTwilioResponse:
        """Pages through Twilio's messages sent in [start_time, end_time] and upserts them by sid."""
        if not request.HasField("start_time"):
            raise InvalidArgument("start_time", "required")
        start = timestamp("start_time", request.start_time)
        end = timestamp("end_time", request.end_time) if request.HasField("end_time") else now()
        if end <= start:
            raise InvalidArgument("end_time", "must be after start_time")
        twilio = await self._client()
        try:
            result = await sync_window(self.cfg, self.store, self.gateway, twilio, start, end)
        except TwilioFailure as failure:
            raise twilio_error(failure) from failure
        return sms_pb2.SyncFromTwilioResponse(
            scanned=result.scanned,
            created=result.created,
            updated=result.updated,
            complete=result.complete,
            stop_reason=STOP_REASONS[result.stopped],
            reached_time=to_timestamp(result.reached),
        )


# How a sync that stopped early says why.
STOP_REASONS = {
    None: sms_pb2.SyncFromTwilioResponse.STOP_REASON_UNSPECIFIED,
    SyncStop.PAGE_LIMIT: sms_pb2.SyncFromTwilioResponse.STOP_REASON_PAGE_LIMIT,
    SyncStop.DEADLINE: sms_pb2.SyncFromTwilioResponse.STOP_REASON_DEADLINE,
}


def twilio_error(failure: TwilioFailure) -> DomainError:
    """The RPC error for a Twilio that could not be read: retry later, or an operator's fix (credentials, account).

    The failure's text is already bounded (TwilioFailure), whatever Twilio or a proxy answered.
    """
    if failure.transient:
        return Unavailable(f"Twilio could not be read: {failure}", Reason.TWILIO_UNAVAILABLE)
    if failure.credentials_refused:
        return FailedPrecondition(
            f"Twilio does not accept TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN: {failure}",
            Reason.TWILIO_CREDENTIALS_REJECTED,
        )
    return FailedPrecondition(f"Twilio refused the list: {failure}", Reason.TWILIO_REFUSED)
