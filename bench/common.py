"""What the benches share: quantiles, a concurrency driver, per-process CPU and store-command meters, JSON output.

Every bench writes its figures with `--json PATH` through `write_json`: a flat object of stable snake_case keys
(documented in the README's performance section) plus nested detail, so `bench/compare.py` can set two runs side
by side.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from prometheus_client.parser import text_string_to_metric_families


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of `values`, nearest rank; NaN when there are none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def run_concurrently(count: int, in_flight: int, one: Callable[[int], Awaitable[None]]) -> float:
    """Runs one(i) for i in range(count) with `in_flight` at a time; returns the elapsed seconds."""
    next_i = iter(range(count))

    async def lane() -> None:
        for i in next_i:
            await one(i)

    start = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(in_flight)))
    return time.perf_counter() - start


def write_json(path: Path | None, figures: Mapping[str, Any]) -> None:
    """Writes `figures` to `path` (when given), keys sorted, NaN written as null."""
    if path is None:
        return

    def clean(value: Any) -> Any:
        if isinstance(value, float) and value != value:
            return None
        if isinstance(value, Mapping):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    path.write_text(json.dumps(clean(figures), indent=2, sort_keys=True) + "\n")


async def store_commands(metrics_url: str) -> dict[str, float]:
    """A process's `sms_store_commands_total`, summed over command names, by stage (gRPC method, worker job)."""
    async with aiohttp.ClientSession() as http, http.get(metrics_url) as resp:
        text = await resp.text()
    by_operation: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "sms_store_commands":
            continue
        for sample in family.samples:
            if sample.name == "sms_store_commands_total":
                op = sample.labels["stage"]
                by_operation[op] = by_operation.get(op, 0.0) + sample.value
    return by_operation


class Measured(Protocol):
    """A process a bench started (tests/support/processes.ChildProcess)."""

    name: str

    def cpu_seconds(self) -> float: ...


@dataclass
class Meter:
    """CPU seconds of some processes and store commands of some metrics endpoints, between `start` and `stop`."""

    processes: Sequence[Measured]
    metrics_urls: Mapping[str, str] = field(default_factory=dict)  # process name -> its /metrics URL
    cpu: dict[str, float] = field(default_factory=dict)
    commands: dict[str, dict[str, float]] = field(default_factory=dict)

    async def start(self) -> Meter:
        self.cpu = {p.name: -p.cpu_seconds() for p in self.processes}
        for name, url in self.metrics_urls.items():
            self.commands[name] = {op: -n for op, n in (await store_commands(url)).items()}
        return self

    async def stop(self) -> Meter:
        for p in self.processes:
            self.cpu[p.name] += p.cpu_seconds()
        for name, url in self.metrics_urls.items():
            before = self.commands.get(name, {})
            after = await store_commands(url)
            self.commands[name] = {op: after.get(op, 0.0) + before.get(op, 0.0) for op in set(after) | set(before)}
        return self

    def cpu_us_per(self, process: str, count: int) -> float:
        """Microseconds of `process`'s CPU per unit of work."""
        return self.cpu[process] * 1e6 / count if count else float("nan")

    def commands_per(self, count: int) -> dict[str, float]:
        """Store commands per unit of work, by process and stage, with a "total"."""
        out: dict[str, float] = {}
        for process, ops in self.commands.items():
            for op, n in ops.items():
                if n:
                    out[f"{process}:{op}"] = n / count
        out["total"] = sum(out.values())
        return out
