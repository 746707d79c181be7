"""Group commit: concurrent requests of one kind run as one store command, each caller answered from its part.

The store pays mostly per command (measured on the embedded SecantusDB: one `$in` read of 50 documents returns them
at ~4.5x the rate of 50 concurrent `find_one`s, one `insert_many` of 50 at ~3.6x `insert_one`, an `update_many` over
50 ids at ~1.9x `update_one`), so reads by key, inserts and marker clears that arrive together are sent together.

No timer: the first request of a quiet moment starts a drain task at once, and whatever arrives while a command is
in flight forms the next batch. A lone request waits one event-loop turn; under load the batches grow by
themselves. Every caller is answered only when the command holding its request has returned, so a write is
durable before its caller goes on (persist, then act), exactly as with a command of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

# Bounds one command's size (a BSON document is at most 16 MiB; an `$in` of this many ids is a few KiB).
MAX_BATCH = 100


class Coalescer(Generic[Item, Result]):
    """Runs `run` over the requests that arrive together; `run` answers each item, in order (a BaseException
    instance in the answers is raised to that item's caller alone)."""

    def __init__(
        self, run: Callable[[list[Item]], Awaitable[Sequence[Result | BaseException]]], max_batch: int = MAX_BATCH
    ) -> None:
        self._run = run
        self._max = max_batch
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._drain_task: asyncio.Task[None] | None = None
        # Batches run, for the benches and tests (how much grouping the load produced).
        self.batches = 0
        self.items = 0

    async def __call__(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        # Read even when its caller has gone, so asyncio does not report an exception nobody retrieved.
        future.add_done_callback(_retrieve)
        self._waiting.append((item, future))
        if self._drain_task is None or self._drain_task.done():
            self._drain_task = asyncio.create_task(self._drain())
        # Shielded: a caller that gives up (a cancelled RPC) must not cancel the batch the others wait on.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[: self._max], self._waiting[self._max :]
            self.batches += 1
            self.items += len(batch)
            try:
                answers = await self._run([item for item, _ in batch])
            except Exception as exc:
                # The whole command failed (a store outage): every caller of this batch gets the error.
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            except BaseException:
                # Cancelled (the process is stopping): the callers still waiting are cancelled with it.
                for _, future in [*batch, *self._waiting]:
                    future.cancel()
                self._waiting = []
                raise
            for (_, future), answer in zip(batch, answers, strict=True):
                if future.done():
                    continue
                if isinstance(answer, BaseException):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
