"""Pacing per sender (a From number or a Messaging Service sid), shared by every worker process through Redis.

Carriers and Twilio meter a sender in segments per second; every worker sending from the same number must draw
on one budget, so the budget lives in Redis and one Lua script both reads and updates it (atomic), on Redis's own
clock (`TIME`), so workers with skewed clocks still agree.

The script is a reservation (GCRA, "virtual scheduling"): the sender's key holds the instant its budget is free
again. A take starts at max(now, that instant), moves it on by segments / rate, and tells the caller how long to
sleep until its start. In token-bucket terms the bucket goes negative by what is reserved ahead; callers are
served in the order their scripts ran (FIFO-fair), each send costs one round trip, and a message of any number of
segments can go (it pays for its segments after it starts: the next message waits segments / rate after it).

Burst: one segment, i.e. none. A token bucket holding R tokens does not keep a 1-second window to R starts: an
idle bucket lets R go at once and refills R more within the same second (2R). With no burst, starts of
one-segment messages are spaced 1/R apart, so any 1-second window holds at most ceil(R) of them, and over any
interval a sender's segments average at most R per second (a single message of n > R segments is the only way to
put more than R in one second: it must go as a whole). The cost is that an idle sender's second message waits
1/R after its first instead of going at once.

Failures: a Redis error propagates (the job fails and is retried) rather than sending unpaced. A take cancelled
while it sleeps keeps its reservation: the capacity is wasted, never exceeded.
"""

from __future__ import annotations

import asyncio
import math

from redis.asyncio import Redis

# Turns are spaced this much wider than the rate: the carrier counts arrivals, and requests that leave exactly
# 1/rate apart arrive with network and scheduling jitter; 5% keeps any second's arrivals within the rate for jitter
# up to 50 ms (measured here under load: an 11th create in a second without it).
ARRIVAL_MARGIN = 1.05
# Kept after the reservation ends, so a sender that is merely between messages is not forgotten; an expired key
# reads as "free now", which is exactly what it would have said.
_IDLE_KEEP_MS = 1000

# KEYS[1]: the sender's reservation end (µs since the epoch, Redis clock). ARGV: rate (segments/s), segments,
# idle keep (ms). Returns the µs the caller waits before it starts. Microseconds since the epoch (~1.8e15) are
# exact in Lua's doubles; string.format('%d') writes them without an exponent.
_RESERVE = """
local rate = tonumber(ARGV[1])
local segments = tonumber(ARGV[2])
local keep_ms = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local free_at = tonumber(redis.call('GET', KEYS[1])) or now
local start = math.max(now, free_at)
local until_us = start + math.ceil(segments * 1000000 / rate)
local ttl_ms = math.ceil((until_us - now) / 1000) + keep_ms
redis.call('SET', KEYS[1], string.format('%d', until_us), 'PX', string.format('%d', ttl_ms))
return start - now
"""


class SenderPacing:
    """`rate` segments per second per sender, across every process using the same Redis and `key_prefix`.

    A rate of 0 (or less) turns pacing off: `take` returns at once without calling Redis.
    """

    def __init__(self, redis: Redis, rate: float, key_prefix: str) -> None:
        if math.isnan(rate) or math.isinf(rate):
            raise ValueError(f"pacing rate must be a finite number of segments per second, not {rate}")
        self.redis = redis
        self.rate = rate
        self.key_prefix = key_prefix
        self._reserve = redis.register_script(_RESERVE)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    async def reserve(self, sender: str, segments: int) -> float:
        """Takes `segments` of `sender`'s budget; returns how many seconds from now its turn starts (no sleep).

        `sender` is key material: the caller bounds its length. `segments` below 1 counts as 1: every send costs
        something. Turns are spaced at the rate less ARRIVAL_MARGIN (see there).
        """
        if self.rate <= 0:
            return 0.0
        args: list[str | int] = [repr(self.rate / ARRIVAL_MARGIN), max(1, segments), _IDLE_KEEP_MS]
        wait_us = int(await self._reserve(keys=[self.key_prefix + sender], args=args))
        return max(wait_us, 0) / 1_000_000

    async def take(self, sender: str, segments: int) -> float:
        """Waits for `sender`'s turn for `segments` (reserve, then sleep); returns the seconds waited (the delay
        Redis assigned, not counting the round trip)."""
        wait = await self.reserve(sender, segments)
        if wait > 0:
            await asyncio.sleep(wait)
        return wait
