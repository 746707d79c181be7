"""The gRPC server's Prometheus metrics, the Twilio client's, and their HTTP exposition (`serve`).

Every metric is defined once, here, at module level in prometheus_client's default registry, which also holds the
process collector (`process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds`, ...) and the
Python runtime's. The worker's own metrics are in server/worker/metrics.py, so the server does not expose worker
gauges at a meaningless 0; the bridge's are in webhook_bridge/metrics.py.

Labels take values from small fixed sets chosen by our code (RPC method names, status code names, reasons named
by constants, HTTP statuses): never a phone number, a sid, a message or user id. tests/test_metrics.py checks
that on running processes.

Recording is switched by `Config.metrics_enabled` through the objects that record (servicers, the hub, the
Twilio client each hold their Config), not by a global: the in-process test stack runs a server and a worker in
one process with configurations of their own.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics, start_http_server

from server.config import split_addr

log = logging.getLogger(__name__)

# No `<name>_created` series beside each counter and histogram: they double the series for a timestamp Prometheus
# does not need (it sees resets itself), and the bridge's exposition never had them.
disable_created_metrics()  # type: ignore[no-untyped-call]

GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")

# go-grpc-prometheus's names, labels and meanings, so its dashboards and alerts apply as they are.
GRPC_STARTED = Counter("grpc_server_started_total", "Total number of RPCs started on the server.", GRPC_LABELS)
GRPC_HANDLED = Counter(
    "grpc_server_handled_total",
    "Total number of RPCs completed on the server, regardless of success or failure.",
    (*GRPC_LABELS, "grpc_code"),
)
GRPC_HANDLING_SECONDS = Histogram(
    "grpc_server_handling_seconds",
    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
    GRPC_LABELS,
)
GRPC_MSG_RECEIVED = Counter(
    "grpc_server_msg_received_total", "Total number of RPC stream messages received on the server.", GRPC_LABELS
)
GRPC_MSG_SENT = Counter(
    "grpc_server_msg_sent_total", "Total number of gRPC stream messages sent by the server.", GRPC_LABELS
)

# Subscribe's fan-out (server/hub.py).
SUBSCRIBERS_OPEN = Gauge("sms_subscribers_open", "Subscribe streams open on this server.")
EVENTS_DELIVERED = Counter(
    "sms_events_delivered_total", "Events written to Subscribe streams (live and replayed), one per subscriber."
)
RESYNCS = Counter("sms_resyncs_total", "ResyncRequired answers written to Subscribe streams, by reason.", ("reason",))
# From the event's time (set when the change was stored) to its hand-over to a live subscriber's stream: the
# latency a client watching sees, queueing behind a slow consumer included. Replayed events are not observed (their
# age measures how long the client was away).
EVENT_DELIVERY_SECONDS = Histogram(
    "sms_event_delivery_seconds",
    "Seconds from an event's stored time to its hand-over to a live subscriber's stream.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

# The Twilio REST client (server/worker/twilio_client.py): the worker's sends and settles, and SyncFromTwilio on
# the server. One observation per HTTP request, measured at the HTTP layer (a slot's wait excluded).
TWILIO_REQUESTS = Counter(
    "sms_twilio_requests_total",
    "Twilio REST requests, by operation (create, list, fetch) and HTTP status (or error: no answer).",
    ("operation", "status"),
)
TWILIO_REQUEST_SECONDS = Histogram(
    "sms_twilio_request_seconds",
    "Seconds per Twilio REST request, answered or not, by operation.",
    ("operation",),
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)


def serve(addr: str) -> None:
    """Serves the default registry on "host:port" (prometheus_client's HTTP server, in a daemon thread); nothing
    when `addr` is empty. Raises ConfigError for an address that is not host:port, OSError when it is taken."""
    if not addr:
        return
    host, port = split_addr(addr, "SMS_METRICS_ADDR")
    start_http_server(port, addr=host)
    log.info("metrics on http://%s:%d/metrics", host, port)
