"""`sms-gateway worker`: the arq worker's settings, start-up and shutdown, built in one place.

Concurrency: SMS_SEND_CONCURRENCY jobs run at once per process (arq's max_jobs), and at most
TWILIO_MAX_CONCURRENCY Twilio requests are open per process (a semaphore in TwilioClient); with N worker
processes the account sees up to N * TWILIO_MAX_CONCURRENCY, so size both against Twilio's REST limit.

Crash safety: send_message's timeout is SMS_JOB_TIMEOUT_SECONDS and it is the only arq function, so a job of a
SIGKILLed worker runs again about SMS_JOB_TIMEOUT_SECONDS + 10 s later (arq's in-progress key); the run finds
the attempt marked in flight and settles it with Twilio before sending again (server.worker.sending).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta
from typing import Any

from arq.worker import Worker, func

from server import metrics
from server.config import TWILIO_SETTINGS, Config
from server.connections import arq_redis
from server.resources import open_resources
from server.signals import on_stop_signals
from server.timeutil import now
from server.worker.jobs import send_message
from server.worker.metrics import watch_backlog
from server.worker.pacing import SenderPacing
from server.worker.queue import SEND_JOB
from server.worker.reconcile import every, reconcile_once
from server.worker.sending import Sending
from server.worker.twilio_client import TwilioClient, TwilioFailure
from server.worker.twilio_sync import sync_window

log = logging.getLogger(__name__)

# arq's default poll delay (0.5 s) caps a worker at max_jobs per half second; short sends need a quick loop.
POLL_DELAY_SECONDS = 0.05
# The periodic sync looks back this many intervals (at least SYNC_MIN_WINDOW), so a missed tick is covered.
SYNC_LOOKBACK_INTERVALS = 3
SYNC_MIN_WINDOW = timedelta(minutes=5)
# Never an embedded database or Redis of its own: it would send from nowhere.
REQUIRED_SETTINGS = (*TWILIO_SETTINGS, "MONGODB_URI", "REDIS_URL", "SMS_PUBLIC_BASE_URL")


def arq_max_tries(cfg: Config) -> int:
    """arq's try limit: above SMS_SEND_MAX_TRIES because arq also counts cancelled runs and settle-only runs.

    The Twilio attempts themselves are counted on the message (`attempts`) and limited by SMS_SEND_MAX_TRIES.
    A job that still exceeds this is dropped by arq and re-enqueued by the reconciler.
    """
    return cfg.send_max_tries * 2 + 5


def worker_settings(cfg: Config) -> dict[str, Any]:
    """Keyword arguments for arq's Worker: every arq setting the worker uses, from Config."""
    assert cfg.redis_url is not None
    return {
        "functions": [
            func(
                send_message,
                name=SEND_JOB,
                timeout=cfg.job_timeout_seconds,
                max_tries=arq_max_tries(cfg),
                keep_result=0,
            )
        ],
        "queue_name": cfg.arq_queue,
        # Our connection rather than arq's RedisSettings, which cannot carry a sentinel password, TLS to the
        # sentinels or a CA bundle with Sentinel (server.connections); the worker closes it when it stops.
        "redis_pool": arq_redis(cfg),
        "max_jobs": cfg.send_concurrency,
        "job_timeout": cfg.job_timeout_seconds,
        # No kept results: a re-enqueue with the same job id (the reconciler) must not be refused by one.
        "keep_result": 0,
        "max_tries": arq_max_tries(cfg),
        "health_check_interval": cfg.health_check_interval_seconds,
        # SIGTERM: stop taking jobs, let running sends finish (each is bounded by the job timeout), then exit.
        "job_completion_wait": cfg.job_timeout_seconds,
        # Our own stop-signal handling (server.signals) calls arq's graceful handler; see `work`.
        "handle_signals": False,
        "poll_delay": POLL_DELAY_SECONDS,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "ctx": {"cfg": cfg},
    }


async def startup(ctx: dict[str, Any]) -> None:
    """Opens MongoDB, Redis and the Twilio client; starts the reconciler, the periodic sync and the backlog gauges."""
    cfg: Config = ctx["cfg"]
    stack = contextlib.AsyncExitStack()
    ctx["stack"] = stack
    res = await stack.enter_async_context(open_resources(cfg))
    gateway = res.gateway
    twilio = TwilioClient(cfg)
    await twilio.start()
    stack.push_async_callback(twilio.close)
    pacing = SenderPacing(res.redis, cfg.sender_mps, cfg.arq_queue + ":pace:")
    ctx["sending"] = Sending(cfg, res.store, gateway, twilio, pacing)

    stopping = asyncio.Event()
    ctx["stopping"] = stopping
    tasks = [
        asyncio.create_task(
            every(
                cfg.reconcile_interval_seconds,
                cfg.arq_queue + ":reconcile-lock",
                res.arq,
                lambda: reconcile_once(cfg, gateway),
                stopping,
            )
        )
    ]
    if cfg.sync_interval_seconds > 0:
        window = max(timedelta(seconds=cfg.sync_interval_seconds * SYNC_LOOKBACK_INTERVALS), SYNC_MIN_WINDOW)

        async def periodic_sync() -> None:
            end = now()
            try:
                # Bounded by SMS_SYNC_MAX_PAGES and SMS_SYNC_DEADLINE_SECONDS; a run that stops early logs how far
                # back it got (sync_window). A Twilio outage is a warning, not a traceback per tick.
                await sync_window(cfg, res.store, gateway, twilio, end - window, end)
            except TwilioFailure as failure:
                log.warning("periodic sync: Twilio could not be read: %s", failure)

        tasks.append(
            asyncio.create_task(
                every(cfg.sync_interval_seconds, cfg.arq_queue + ":sync-lock", res.arq, periodic_sync, stopping)
            )
        )
    if cfg.metrics_enabled:
        tasks.append(asyncio.create_task(watch_backlog(res.store, stopping)))
    ctx["background"] = tasks
    if cfg.job_timeout_seconds < 2 * cfg.twilio_timeout_seconds + 1:
        log.warning(
            "SMS_JOB_TIMEOUT_SECONDS (%d) is short for two Twilio calls of up to %g s (settle + send)",
            cfg.job_timeout_seconds,
            cfg.twilio_timeout_seconds,
        )
    log.info(
        "worker ready: queue %s, %d jobs at once, %d Twilio requests at once, job timeout %d s",
        cfg.arq_queue,
        cfg.send_concurrency,
        cfg.twilio_max_concurrency,
        cfg.job_timeout_seconds,
    )


async def shutdown(ctx: dict[str, Any]) -> None:
    """Stops the background duties and closes every connection (after arq has finished the running jobs)."""
    stopping: asyncio.Event | None = ctx.get("stopping")
    if stopping is not None:
        stopping.set()
    tasks: list[asyncio.Task[None]] = ctx.get("background", [])
    if tasks:
        _, pending = await asyncio.wait(tasks, timeout=5)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    stack: contextlib.AsyncExitStack | None = ctx.get("stack")
    if stack is not None:
        await stack.aclose()


async def work(cfg: Config, **overrides: Any) -> None:
    """Runs an arq worker with our settings (and `overrides`, e.g. burst=True) until a stop signal or its end."""
    worker = Worker(**{**worker_settings(cfg), **overrides})
    remove_handlers = on_stop_signals(worker.handle_sig_wait_for_completion)
    try:
        await worker.async_run()
    except asyncio.CancelledError:
        # arq's stop handler cancels its main task once the running jobs are done: a normal stop.
        pass
    finally:
        remove_handlers()
        await worker.close()
    log.info("worker stopped")


def run(cfg: Config) -> int:
    """Entry point of `sms-gateway worker`; ConfigError (exit 2 in the CLI) names every missing setting."""
    cfg.require(*REQUIRED_SETTINGS)
    # From start-up, before arq connects: the process metrics then also cover a worker waiting for its stores.
    metrics.serve(cfg.metrics_addr)
    asyncio.run(work(cfg))
    return 0
