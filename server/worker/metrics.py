"""The worker's own Prometheus metrics: send jobs, retries, settles, pacing, and the queue's backlog gauges.

Defined once, at module level in the default registry, which `server.metrics.serve` exposes (with the Twilio
request metrics defined there, shared with the server's SyncFromTwilio). Only the worker imports this module, so
the server exposes none of these at a meaningless 0.

Every label value is one of the fixed sets below: the run's result word, a Twilio failure, a settle are mapped to
a few words, never carrying a sid, a number or a message id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import Counter, Gauge, Histogram

from server import metrics as _server_metrics  # noqa: F401  (created series off, as for every process)
from server import status as st
from server.store import Store
from server.timeutil import aware, now
from server.worker.twilio_client import SENDER_QUEUE_FULL, TOO_MANY_REQUESTS, TwilioFailure

log = logging.getLogger(__name__)

JOBS = Counter("sms_worker_jobs_total", "Runs of the send job, by outcome.", ("outcome",))
SEND_RETRIES = Counter(
    "sms_send_retries_total", "Send jobs deferred to try again after a failure, by reason.", ("reason",)
)
SETTLES = Counter(
    "sms_settles_total",
    "Attempts of unknown outcome settled against Twilio's list, by result (adopted, absent, failed, deferred).",
    ("result",),
)
SCHEDULED_BACKLOG = Gauge("sms_scheduled_backlog", "Messages scheduled for later and not yet due.")
OLDEST_QUEUED_AGE = Gauge("sms_oldest_queued_age_seconds", "Age of the oldest QUEUED message (0 when none is queued).")
PACING_WAIT = Histogram(
    "sms_pacing_wait_seconds",
    "Seconds a send waits for its sender's turn (SMS_SENDER_MPS), as reserved.",
    buckets=(0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)

# sms_worker_jobs_total's outcomes: every word Sending.run returns maps to one of these.
OUTCOMES = (
    "sent",
    "adopted",
    "failed",
    "retry",
    "deferred",
    "not_sent",
    "already_sent",
    "skipped",
    "error",
    "interrupted",
    "other",
)
# The run's words that begin with these (the rest of the word names a sid, a status, a count).
_PREFIXES = (
    ("sent ", "sent"),
    ("recorded ", "sent"),  # a sid Twilio gave an earlier run in this process, stored now
    ("adopted ", "adopted"),
    ("failed", "failed"),
    ("not sent", "not_sent"),
)
_WORDS = {"already sent": "already_sent", "no such message": "skipped", "not outbound": "skipped"}
BACKLOG_SECONDS = 5.0


def job_outcome(word: str) -> str:
    """The sms_worker_jobs_total outcome of a run that returned `word` (Sending.run's word for arq's log)."""
    if word in _WORDS:
        return _WORDS[word]
    if word in st.TERMINAL:
        # Nothing to do: canceled, or failed or delivered before this run (checked before "failed ..." below).
        return "not_sent"
    for prefix, outcome in _PREFIXES:
        if word.startswith(prefix):
            return outcome
    return "other"


def retry_reason(failure: TwilioFailure) -> str:
    """sms_send_retries_total's reason for a transient Twilio failure."""
    if failure.http_status == 429 or failure.code == TOO_MANY_REQUESTS:
        return "rate_limited"
    if failure.code == SENDER_QUEUE_FULL:
        return "sender_queue_full"
    if failure.http_status >= 500:
        return "server_error"
    if not failure.http_status:
        return "network"  # a timeout, a refused or cut connection, an unreadable answer
    return "other"


async def watch_backlog(store: Store, stopping: asyncio.Event, interval: float = BACKLOG_SECONDS) -> None:
    """Sets the backlog gauges every `interval` seconds until `stopping`.

    In every worker, not one per tick under a lock: each worker's gauges then say the same current value (take
    max() across workers), where a locked duty would leave the others' gauges stale. Two indexed reads per tick.
    """
    failing = False
    while not stopping.is_set():
        try:
            t = now()
            SCHEDULED_BACKLOG.set(await store.count_scheduled_after(t))
            oldest = await store.oldest_queued()
            OLDEST_QUEUED_AGE.set(0.0 if oldest is None else max(0.0, (t - aware(oldest)).total_seconds()))
            failing = False
        except Exception as exc:
            if not failing:  # once per outage, not every tick
                log.warning("backlog gauges not updated: %s: %s", type(exc).__name__, exc)
            failing = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), interval)
