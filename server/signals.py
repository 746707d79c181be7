"""Stop signals, handled one way by every long-running process (server, worker, bridge, simulator, dev stack)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterable

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


def on_stop_signals(
    callback: Callable[[signal.Signals], object], signals: Iterable[signal.Signals] = STOP_SIGNALS
) -> Callable[[], None]:
    """Calls `callback(sig)` in the running loop on each of `signals`; returns a function that removes them."""
    loop = asyncio.get_running_loop()
    installed = list(signals)
    for sig in installed:
        loop.add_signal_handler(sig, callback, sig)

    def remove() -> None:
        for sig in installed:
            loop.remove_signal_handler(sig)

    return remove


def stop_event(signals: Iterable[signal.Signals] = STOP_SIGNALS) -> asyncio.Event:
    """An event set by the first of `signals` (SIGTERM, SIGINT by default)."""
    event = asyncio.Event()
    on_stop_signals(lambda _sig: event.set(), signals)
    return event
