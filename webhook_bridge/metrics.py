"""The bridge's Prometheus metrics, on prometheus_client: the names and labels of the earlier hand-written registry.

`BridgeMetrics` keeps the small interface the bridge's modules record through (`posts.inc(route, outcome)`,
`ingest_latency.observe(seconds, method, result)`, ...), over prometheus_client families defined once in the
default registry, which also holds the process collector (CPU, memory, open fds). /metrics on the bridge's own
port renders that registry (`render`), and `serve_metrics` exposes the same on SMS_METRICS_ADDR.

Label values come from our own code (route names, outcomes, method names, status code names), never from a
request, so the number of series stays bounded.
"""

from __future__ import annotations

import logging

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)

from server.config import split_addr

log = logging.getLogger(__name__)

# As the hand-written registry: no `<name>_created` series (see server/metrics.py).
disable_created_metrics()  # type: ignore[no-untyped-call]

DEFAULT_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LabelledCounter:
    """A counter recorded with its label values in order, as `inc("inbound", "stored")`."""

    def __init__(self, family: Counter) -> None:
        self.family = family

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        """Adds `amount` to the series named by `labels` (in the family's label order; none for a plain counter)."""
        (self.family.labels(*labels) if labels else self.family).inc(amount)


class LabelledHistogram:
    """A histogram observed with its label values in order, as `observe(0.003, "RecordInbound", "OK")`."""

    def __init__(self, family: Histogram) -> None:
        self.family = family

    def observe(self, value: float, *labels: str) -> None:
        """Records one observation of `value` (seconds) for the series named by `labels`."""
        (self.family.labels(*labels) if labels else self.family).observe(value)


def _families(registry: CollectorRegistry) -> tuple[Counter, Counter, Histogram, Counter, Counter, Counter]:
    return (
        Counter(
            "sms_bridge_posts_total",
            "Twilio posts answered, by route and outcome.",
            ("route", "outcome"),
            registry=registry,
        ),
        Counter(
            "sms_bridge_signature_failures_total",
            "Posts refused because X-Twilio-Signature was missing or did not verify.",
            ("route", "reason"),
            registry=registry,
        ),
        Histogram(
            "sms_bridge_ingest_call_seconds",
            "Latency of the internal SmsIngestService call, retries included, by method and result.",
            ("method", "result"),
            buckets=DEFAULT_BUCKETS,
            registry=registry,
        ),
        Counter(
            "sms_bridge_ingest_retries_total",
            "Internal calls repeated after UNAVAILABLE or an unknown sid, by method and cause.",
            ("method", "cause"),
            registry=registry,
        ),
        Counter(
            "sms_bridge_connections_refused_total",
            "Connections answered 503 and closed because SMS_BRIDGE_MAX_CONNECTIONS were open.",
            registry=registry,
        ),
        Counter(
            "sms_bridge_connections_timed_out_total",
            "Connections closed because a request's headers did not arrive within SMS_BRIDGE_READ_TIMEOUT_SECONDS.",
            registry=registry,
        ),
    )


# The process's metrics: every BridgeMetrics() without a registry of its own records into these.
_DEFAULT_FAMILIES = _families(REGISTRY)


class BridgeMetrics:
    """Every metric the bridge exposes on /metrics.

    Without `registry`, the default registry's families (one set per process, however many instances: the app,
    its ingest client and its connection guard share them). With one, families of its own, for a test that needs
    counts nobody else touches.
    """

    CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or REGISTRY
        families = _DEFAULT_FAMILIES if registry is None else _families(registry)
        posts, signature_failures, ingest_latency, ingest_retries, refused, timed_out = families
        self.posts = LabelledCounter(posts)
        self.signature_failures = LabelledCounter(signature_failures)
        self.ingest_latency = LabelledHistogram(ingest_latency)
        self.ingest_retries = LabelledCounter(ingest_retries)
        self.connections_refused = LabelledCounter(refused)
        self.connections_timed_out = LabelledCounter(timed_out)

    def render(self) -> str:
        """The registry in the Prometheus text exposition format (0.0.4), process metrics included."""
        return generate_latest(self.registry).decode()


def serve_metrics(addr: str) -> None:
    """Serves the default registry on "host:port" as well (a daemon thread); nothing when `addr` is empty.

    Not server.metrics.serve: importing that module would add the gRPC server's families to this process.
    """
    if not addr:
        return
    host, port = split_addr(addr, "SMS_METRICS_ADDR")
    start_http_server(port, addr=host)
    log.info("metrics on http://%s:%d/metrics", host, port)
