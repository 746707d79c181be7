"""Store round trips, counted by PyMongo's command monitoring: `sms_store_commands_total{stage, command}`.

Engine-independent (the driver reports every command it sends, to SecantusDB or MongoDB alike), and labelled by
what the process was doing, so a bench can say how many round trips each stage of a message costs: the gRPC
method in the server (bound per call by server/edge.py), the job kind in the worker (`stage`), `other` for
the rest (start-up, background duties). A batched command (server/batching.py) counts once, under the stage
of whichever caller started its batch.

Registered with PyMongo for the whole process when this module is imported (server/store.py imports it), so it
sees every client made afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from prometheus_client import Counter
from pymongo import monitoring

from server import log_context

COMMANDS = Counter(
    "sms_store_commands_total",
    "Commands sent to MongoDB, by stage (the gRPC method served, the worker job kind) and command name.",
    ("stage", "command"),
)
# Command names outside this set are counted as "other": labels stay a small fixed set.
KNOWN_COMMANDS = frozenset(
    {"find", "insert", "update", "delete", "aggregate", "count", "getMore", "findAndModify", "createIndexes"}
)

_stage: ContextVar[str] = ContextVar("sms_store_stage", default="other")


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Counts the block's store commands under `name` (a fixed word of our code, never input)."""
    token = _stage.set(name)
    try:
        yield
    finally:
        _stage.reset(token)


def current_stage() -> str:
    """The label of a command sent now: the gRPC method being served, else the bound operation."""
    return log_context.current().get("grpc_method") or _stage.get()


class _CommandCounter(monitoring.CommandListener):
    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name = event.command_name if event.command_name in KNOWN_COMMANDS else "other"
        COMMANDS.labels(current_stage(), name).inc()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


monitoring.register(_CommandCounter())
