"""A tiny Prometheus text-format registry (counters and histograms), so the bridge needs no new dependency."""

from __future__ import annotations

import math
from collections.abc import Sequence

# Label values come from our own code (route names, outcomes, method names), never from a request, so the
# number of series stays bounded; escaping still keeps the exposition valid whatever they hold.
LabelValues = tuple[str, ...]

DEFAULT_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    """A monotonically increasing count per label set."""

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(label_names)
        self._values: dict[LabelValues, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        """Adds `amount` to the series named by `labels` (in label_names order)."""
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {labels}")
        self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels: str) -> float:
        """The current value of one series (0 when never incremented)."""
        return self._values.get(labels, 0.0)

    def render(self) -> list[str]:
        """The exposition lines of this metric."""
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for labels, value in sorted(self._values.items()):
            lines.append(f"{self.name}{_labels(self.label_names, labels)} {_num(value)}")
        return lines


class Histogram:
    """Cumulative buckets, sum and count per label set."""

    def __init__(
        self,
        name: str,
        help_text: str,
        label_names: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(label_names)
        self.buckets = tuple(sorted(buckets))
        # Per label set: one count per bucket (non-cumulative, +Inf last), then the sum.
        self._series: dict[LabelValues, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, *labels: str) -> None:
        """Records one observation of `value` (seconds) for the series named by `labels`."""
        if len(labels) != len(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {labels}")
        counts, total = self._series.setdefault(labels, ([0] * (len(self.buckets) + 1), [0.0]))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        total[0] += value

    def count(self, *labels: str) -> int:
        """How many observations one series holds."""
        series = self._series.get(labels)
        return sum(series[0]) if series else 0

    def render(self) -> list[str]:
        """The exposition lines of this metric."""
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for labels, (counts, total) in sorted(self._series.items()):
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                running += n
                le = f'le="{_num(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, labels, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, labels)} {_num(total[0])}")
            lines.append(f"{self.name}_count{_labels(self.label_names, labels)} {running}")
        return lines


class BridgeMetrics:
    """Every metric the bridge exposes on /metrics."""

    CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self) -> None:
        self.posts = Counter(
            "sms_bridge_posts_total", "Twilio posts answered, by route and outcome.", ("route", "outcome")
        )
        self.signature_failures = Counter(
            "sms_bridge_signature_failures_total",
            "Posts refused because X-Twilio-Signature was missing or did not verify.",
            ("route", "reason"),
        )
        self.ingest_latency = Histogram(
            "sms_bridge_ingest_call_seconds",
            "Latency of the internal SmsIngestService call, retries included, by method and result.",
            ("method", "result"),
        )
        self.ingest_retries = Counter(
            "sms_bridge_ingest_retries_total",
            "Internal calls repeated after UNAVAILABLE or an unknown sid, by method and cause.",
            ("method", "cause"),
        )
        self.connections_refused = Counter(
            "sms_bridge_connections_refused_total",
            "Connections answered 503 and closed because SMS_BRIDGE_MAX_CONNECTIONS were open.",
        )
        self.connections_timed_out = Counter(
            "sms_bridge_connections_timed_out_total",
            "Connections closed because a request's headers did not arrive within SMS_BRIDGE_READ_TIMEOUT_SECONDS.",
        )

    def render(self) -> str:
        """The whole registry in the Prometheus text exposition format (0.0.4)."""
        lines: list[str] = []
        metrics = (
            self.posts,
            self.signature_failures,
            self.ingest_latency,
            self.ingest_retries,
            self.connections_refused,
            self.connections_timed_out,
        )
        for metric in metrics:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
