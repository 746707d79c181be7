"""A Subscribe stream that survives server restarts: reconnects with backoff and resumes where it left off."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncGenerator, Collection
from dataclasses import dataclass

import grpc
from sms.v1 import sms_pb2, sms_pb2_grpc

from sms_gateway_client.auth import bearer_metadata

log = logging.getLogger(__name__)

RETRYABLE: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})


@dataclass(frozen=True)
class Backoff:
    """Exponential reconnect delays: initial * multiplier**n, capped, with ± jitter as a fraction."""

    initial: float = 0.1
    maximum: float = 3.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int) -> float:
        """The delay before reconnect attempt `attempt` (0-based)."""
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))
        return max(0.0, base * (1 + random.uniform(-self.jitter, self.jitter)))


def _id(text: str) -> tuple[int, int] | None:
    """An event id as a comparable tuple; None when it is not one."""
    ms, sep, seq = text.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        return None
    return int(ms), int(seq)


def _channel_options(backoff: Backoff) -> list[tuple[str, int]]:
    # gRPC's own reconnect backoff grows to 120 s by default; keep it within ours so a restarted
    # server is found as soon as it listens again.
    cap_ms = max(100, int(backoff.maximum * 1000))
    return [
        ("grpc.initial_reconnect_backoff_ms", min(cap_ms, max(100, int(backoff.initial * 1000)))),
        ("grpc.min_reconnect_backoff_ms", min(cap_ms, max(100, int(backoff.initial * 1000)))),
        ("grpc.max_reconnect_backoff_ms", cap_ms),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
    ]


async def subscribe(
    channel_or_target: grpc.aio.Channel | str,
    token: str,
    *,
    conversation_id: str = "",
    all_owners: bool = False,
    resume_token: str = "",
    heartbeats: bool = False,
    backoff: Backoff = Backoff(),
    retry_codes: Collection[grpc.StatusCode] = RETRYABLE,
    credentials: grpc.ChannelCredentials | None = None,
) -> AsyncGenerator[sms_pb2.SubscribeResponse, None]:
    """Yields events and resyncs (and heartbeats when asked) without gaps or duplicates, across reconnects.

    Reconnects on `retry_codes` (UNAVAILABLE: restarts, SIGTERM, lost connections) and on a stream the
    server ended, resuming after the last event delivered; any other error is raised. A
    `resync_required` response means events were lost: re-list, then carry on (the stream continues).
    """
    own_channel: grpc.aio.Channel | None = None
    if isinstance(channel_or_target, str):
        options = _channel_options(backoff)
        own_channel = (
            grpc.aio.secure_channel(channel_or_target, credentials, options=options)
            if credentials is not None
            else grpc.aio.insecure_channel(channel_or_target, options=options)
        )
        channel = own_channel
    else:
        channel = channel_or_target
    stub = sms_pb2_grpc.SmsServiceStub(channel)
    last = resume_token
    attempt = 0
    try:
        while True:
            call = stub.Subscribe(
                sms_pb2.SubscribeRequest(conversation_id=conversation_id, resume_token=last, all_owners=all_owners),
                metadata=bearer_metadata(token),
            )
            try:
                async for response in call:
                    attempt = 0
                    kind = response.WhichOneof("response")
                    if kind == "event":
                        seen, got = _id(last), _id(response.event.id)
                        if seen is not None and got is not None and got <= seen:
                            continue  # already delivered before a reconnect
                        last = response.event.id
                        yield response
                    elif kind == "resync_required":
                        last = response.resync_required.last_event_id or last
                        yield response
                    elif kind == "heartbeat":
                        # Nothing for us up to this id: advancing keeps an idle resume point inside the retained log.
                        seen, got = _id(last), _id(response.heartbeat.last_event_id)
                        if got is not None and (seen is None or got > seen):
                            last = response.heartbeat.last_event_id
                        if heartbeats:
                            yield response
                log.info("subscribe: stream ended by the server; reconnecting after %s", last or "(start)")
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in retry_codes:
                    raise
                log.info("subscribe: %s (%s); reconnecting after %s", exc.code().name, exc.details(), last or "(start)")
            finally:
                call.cancel()
            await asyncio.sleep(backoff.delay(attempt))
            attempt += 1
    finally:
        if own_channel is not None:
            with contextlib.suppress(Exception):
                await own_channel.close()
