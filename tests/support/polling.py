"""Polling a condition until it holds: `eventually` for sync code, `eventually_async` for coroutines."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")

DEFAULT_INTERVAL = 0.05


class _Poll:
    """The bookkeeping both forms share: the deadline, the last value seen, and the failure to raise."""

    def __init__(self, within: float, what: str) -> None:
        self.within = within
        self.what = what
        self.deadline = time.monotonic() + within
        self.last: object = None

    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def failure(self) -> AssertionError:
        return AssertionError(f"timed out after {self.within} s waiting for {self.what}; last saw {self.last!r}")


def eventually(
    probe: Callable[[], T],
    within: float,
    what: str,
    *,
    until: Callable[[T], object] = bool,
    interval: float = DEFAULT_INTERVAL,
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """Calls `probe()` until `until(value)` holds and returns that value.

    An exception of a type in `ignoring` counts as "not yet". When `within` seconds pass, raises an
    AssertionError naming `what` and the last value (or ignored exception) seen.
    """
    poll = _Poll(within, what)
    while True:
        try:
            value = probe()
            if until(value):
                return value
            poll.last = value
        except ignoring as exc:
            poll.last = exc
        if poll.expired():
            raise poll.failure()
        time.sleep(interval)


@overload
async def eventually_async(
    probe: Callable[[], Awaitable[T]],
    within: float,
    what: str,
    *,
    until: Callable[[T], object] = ...,
    interval: float = ...,
    ignoring: tuple[type[Exception], ...] = ...,
) -> T: ...


@overload
async def eventually_async(
    probe: Callable[[], T],
    within: float,
    what: str,
    *,
    until: Callable[[T], object] = ...,
    interval: float = ...,
    ignoring: tuple[type[Exception], ...] = ...,
) -> T: ...


async def eventually_async(
    probe: Callable[[], Any],
    within: float,
    what: str,
    *,
    until: Callable[[Any], object] = bool,
    interval: float = DEFAULT_INTERVAL,
    ignoring: tuple[type[Exception], ...] = (),
) -> Any:
    """`eventually` for the event loop: `probe` may be a plain function or return an awaitable."""
    poll = _Poll(within, what)
    while True:
        try:
            value = probe()
            if inspect.isawaitable(value):
                value = await value
            if until(value):
                return value
            poll.last = value
        except ignoring as exc:
            poll.last = exc
        if poll.expired():
            raise poll.failure()
        await asyncio.sleep(interval)
