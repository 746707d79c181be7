"""Limits per user: open Subscribe streams (per server process) and the Send rate (a token bucket in Redis).

Both refuse with RESOURCE_EXHAUSTED and a RetryInfo saying when to try again. Every role is limited alike: a
user's token, whoever holds it, is what the limit protects the gateway (and the Twilio bill) from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from redis.asyncio import Redis

from server.errors import ResourceExhausted
from server.reasons import Reason

log = logging.getLogger(__name__)

# What a refused Subscribe is told to wait: streams end when clients go, which no clock predicts.
STREAM_RETRY_SECONDS = 5.0
SEND_BUCKET_PREFIX = "sms:send-rate:"
# A Redis that does not answer within this time does not hold Send up (see SendRate.admit).
REDIS_TIMEOUT_SECONDS = 1.0

# KEYS[1]: the user's bucket (a hash: tokens, at in ms). ARGV: rate (tokens/s), burst (bucket size).
# Takes one token and returns 0, or returns the milliseconds until one is due and takes nothing. Redis's own
# clock is the one clock, so replicas with skewed clocks share one bucket fairly. The key expires once the
# bucket would be full again, so idle users cost nothing.
_TAKE_TOKEN = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local saved = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(saved[1]) or burst
local at = tonumber(saved[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
if tokens < 1 then
  return math.ceil((1 - tokens) * 1000 / rate)
end
tokens = tokens - 1
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', string.format('%d', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
return 0
"""


class StreamSlots:
    """Open Subscribe streams per user, counted in this server process.

    Per process, not across replicas: what a stream costs (a queue, a task, fan-out CPU) is this process's, so
    the count bounds exactly what one user can take from any one replica, with no lease to expire after a crash.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def open_for(self, user_id: str) -> int:
        """How many streams `user_id` holds open here."""
        return self._open.get(user_id, 0)

    @contextlib.contextmanager
    def hold(self, user_id: str) -> Iterator[None]:
        """One stream slot of `user_id` while the block runs; ResourceExhausted when all are taken."""
        held = self.open_for(user_id)
        if held >= self.limit:
            raise ResourceExhausted(
                f"at most {self.limit} open Subscribe streams per user",
                STREAM_RETRY_SECONDS,
                Reason.TOO_MANY_STREAMS,
            )
        self._open[user_id] = held + 1
        try:
            yield
        finally:
            left = self._open[user_id] - 1
            if left:
                self._open[user_id] = left
            else:
                del self._open[user_id]


class SendRate:
    """Sends per user and second, with bursts: one token bucket per user in Redis, shared by every replica.

    A rate of 0 turns the limit off.
    """

    def __init__(self, redis: Redis, rate: float, burst: int) -> None:
        self.redis = redis
        self.rate = rate
        self.burst = burst
        self._take = redis.register_script(_TAKE_TOKEN)

    async def admit(self, user_id: str) -> None:
        """Takes one of the user's tokens; ResourceExhausted (with the wait) when none is left.

        When Redis fails or is slow the Send goes ahead: Send already accepts messages while Redis is away (the
        reconciler queues them later), and a limiter outage should not become a Send outage.
        """
        if self.rate <= 0:
            return
        try:
            async with asyncio.timeout(REDIS_TIMEOUT_SECONDS):
                wait_ms = int(await self._take(keys=[SEND_BUCKET_PREFIX + user_id], args=[self.rate, self.burst]))
        except Exception as exc:
            log.warning("send rate limit not applied: Redis failed (%s)", exc)
            return
        if wait_ms > 0:
            raise ResourceExhausted(
                f"at most {self.rate:g} Sends per second per user (bursts of {self.burst})",
                wait_ms / 1000,
                Reason.SEND_RATE_EXCEEDED,
            )
