"""The admin operations of SmsService: queue and delivery statistics, and SyncFromTwilio."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from arq.connections import ArqRedis
from arq.constants import health_check_key_suffix
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from sms.v1 import sms_pb2

from server.config import TWILIO_SETTINGS, Config
from server.delivery_stats import EVENTS, DeliveryStats, resolve
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
    """GetQueueStats, GetDeliveryStats and SyncFromTwilio for the gRPC server."""

    def __init__(self, cfg: Config, store: Store, arq: ArqRedis, gateway: Gateway) -> None:
        self.cfg = cfg
        self.store = store
        self.arq = arq
        self.gateway = gateway
        # The counters the gateway keeps as messages change (server/delivery_stats.py): the same keys it writes.
        self.stats: DeliveryStats = gateway.stats
        self._twilio: TwilioClient | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        if self._twilio is not None:
            await self._twilio.close()
            self._twilio = None

    async def queue_stats(self) -> sms_pb2.GetQueueStatsResponse:
        """The backlog from MongoDB (what waits to be sent), the recent sent and failed counts from the delivery
        counters in Redis (their cost does not grow with the messages stored), the queue and the worker's
        heartbeat from Redis.

        The reads are independent and run at once: against a MongoDB that serves its connections concurrently
        the call costs about the slowest of them (the embedded SecantusDB answers one at a time anyway).
        """
        t = now()
        (queued, due), first_queued, scheduled, backlog, recent, (queue_length, health) = await asyncio.gather(
            self.store.waiting(),
            self.store.oldest_queued(),
            self.store.count_scheduled_after(t),
            self.store.backlog(t),
            self.stats.recent(t),
            self._arq_state(),
        )
        retrying = sum(1 for d in due if d.get("retry_at"))
        in_progress = len(due) - retrying
        created = [aware(d["created"]) for d in due if d.get("created")]
        if first_queued is not None:
            created.append(aware(first_queued))
        oldest = min(created, default=None)
        age = Duration()
        if oldest is not None:
            age.FromTimedelta(max(t - oldest, timedelta(0)))
        senders = self._senders(backlog)
        return sms_pb2.GetQueueStatsResponse(
            scheduled=scheduled,
            senders=senders,
            queued=queued,
            in_progress=in_progress,
            retrying=retrying,
            failed_last_hour=recent.failed_last_hour,
            sent_last_minute=recent.sent_last_minute,
            sent_last_hour=recent.sent_last_hour,
            oldest_queued_age=age,
            queue_length=queue_length,
            # The key expires one second after arq's health-check interval, so present means fresh.
            worker_healthy=health is not None,
            worker_health=health.decode(errors="replace") if isinstance(health, bytes) else (health or ""),
        )

    async def _arq_state(self) -> tuple[int, bytes | str | None]:
        """arq's queue length and the worker's health-check line (None when no worker checked in lately)."""
        async with self.arq.pipeline(transaction=False) as pipe:
            pipe.zcard(self.cfg.arq_queue)
            pipe.get(self.cfg.arq_queue + health_check_key_suffix)
            length, health = await pipe.execute()
        return int(length), health

    async def delivery_stats(self, request: sms_pb2.GetDeliveryStatsRequest) -> sms_pb2.GetDeliveryStatsResponse:
        """Counts per time bucket, Send-to-delivered percentiles and top error codes from the delivery counters
        (server/delivery_stats.py: one pipelined Redis read), with each sender's backlog from MongoDB."""
        window = _duration("window", request.window) if request.HasField("window") else None
        bucket = _duration("bucket", request.bucket) if request.HasField("bucket") else None
        # Checked before either read starts, so a bad request leaves no read running.
        window, bucket = resolve(window, bucket)
        t = now()
        result, backlog = await asyncio.gather(self.stats.read(window, bucket, t), self.store.backlog(t))
        return sms_pb2.GetDeliveryStatsResponse(
            # Up to 1,440 buckets: built field by field without the datetime round trips of to_timestamp.
            buckets=[
                sms_pb2.DeliveryBucket(
                    start_time=Timestamp(seconds=int(b.start.timestamp())),
                    **{event: n for event, n in b.counts.events.items() if event in EVENTS},
                    delivered_p50=_proto_duration(b.p50),
                    delivered_p95=_proto_duration(b.p95),
                )
                for b in result.buckets
            ],
            delivered_p50=_proto_duration(result.p50),
            delivered_p95=_proto_duration(result.p95),
            top_errors=[
                sms_pb2.ErrorCodeCount(code=e.code, description=e.description, count=e.count) for e in result.top_errors
            ],
            senders=self._senders(backlog),
            start_time=to_timestamp(result.start),
            bucket=_proto_duration(result.bucket),
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


def _duration(name: str, value: Duration) -> timedelta:
    """A request's Duration as a timedelta; InvalidArgument naming the field for one Python cannot hold."""
    try:
        return value.ToTimedelta()
    except (ValueError, OverflowError) as exc:
        raise InvalidArgument(name, "not a valid duration") from exc


def _proto_duration(value: timedelta | None) -> Duration | None:
    """A Duration for the response; None (the field left unset, which reads as zero) when no message was
    delivered in the bucket."""
    if value is None:
        return None
    # Never negative here (latencies are clamped at zero, buckets are positive), so divmod's signs suit Duration.
    seconds, micros = divmod((value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds, 1_000_000)
    return Duration(seconds=seconds, nanos=micros * 1000)


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
