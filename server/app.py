"""The gRPC server process: servicers, health, reflection, start-up and graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from sms.v1 import ingest_pb2, ingest_pb2_grpc, sms_pb2, sms_pb2_grpc

from server import metrics
from server.admin import Admin
from server.auth import check_secrets
from server.config import Config
from server.hub import Hub
from server.ingest import IngestServicer
from server.resources import Resources, open_resources
from server.service import SmsServicer
from server.signals import stop_event

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    sms_pb2.DESCRIPTOR.services_by_name["SmsService"].full_name,
    ingest_pb2.DESCRIPTOR.services_by_name["SmsIngestService"].full_name,
)
HEALTH_PROBE_SECONDS = 1.0

# Keepalive: pings find dead peers behind NATs and proxies within ~40 s; clients may ping every 10 s
# even with no call open (the subscribe helper and Envoy keep long streams this way).
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]


async def watch_health(health: HealthServicer, res: Resources, stopping: asyncio.Event) -> None:
    """Reports NOT_SERVING while MongoDB or Redis does not answer."""
    last: int | None = None
    while not stopping.is_set():
        try:
            await asyncio.wait_for(asyncio.gather(res.store.ping(), res.redis.ping()), 2)
            state = health_pb2.HealthCheckResponse.SERVING
        except Exception as exc:
            state = health_pb2.HealthCheckResponse.NOT_SERVING
            if last != state:
                log.warning("dependency check failed: %s", exc)
        if state != last and not stopping.is_set():
            for name in ("", *SERVICE_NAMES):
                await health.set(name, state)
            last = state
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), HEALTH_PROBE_SECONDS)


class GatewayServer:
    """The gRPC server over open resources: SmsService, SmsIngestService, health and reflection."""

    def __init__(self, cfg: Config, res: Resources) -> None:
        self.cfg = cfg
        self.res = res
        self.hub = Hub(cfg, res.redis)
        self.admin = Admin(cfg, res.store, res.arq, res.gateway)
        self.health = HealthServicer()
        self.server = grpc.aio.server(options=KEEPALIVE_OPTIONS)
        sms_pb2_grpc.add_SmsServiceServicer_to_server(SmsServicer(cfg, res.gateway, self.hub, self.admin), self.server)
        ingest_pb2_grpc.add_SmsIngestServiceServicer_to_server(IngestServicer(res.gateway, cfg), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server,
        )
        self.port = 0
        self._stopping = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Listens on SMS_GRPC_ADDR (port 0: a free one, see `port`) and starts serving and watching health."""
        self.port = self.server.add_insecure_port(self.cfg.grpc_addr)
        await self.server.start()
        await self.hub.start()
        self._watcher = asyncio.create_task(watch_health(self.health, self.res, self._stopping))
        log.info("sms-gateway server listening on %s", self.cfg.grpc_addr)

    async def stop(self) -> None:
        """NOT_SERVING, ends streams, drains calls for up to SMS_DRAIN_SECONDS."""
        log.info("shutting down: NOT_SERVING, ending streams, draining calls for up to %.0f s", self.cfg.drain_seconds)
        self._stopping.set()
        await self.health.enter_graceful_shutdown()
        await self.hub.close()
        await self.server.stop(self.cfg.drain_seconds)
        if self._watcher is not None:
            await self._watcher
        await self.admin.close()


def check_start(cfg: Config) -> None:
    """The server's credentials: ConfigError (exit 2) for a missing or weak key; without an ingest key, say so."""
    cfg.require("SMS_JWT_SECRET")
    check_secrets(SMS_JWT_SECRET=cfg.jwt_secret, SMS_INGEST_SECRET=cfg.ingest_secret)
    if not cfg.ingest_secret:
        log.error(
            "SMS_INGEST_SECRET is not set: SmsIngestService refuses every call (FAILED_PRECONDITION, "
            "INGEST_NOT_CONFIGURED), so the webhook bridge cannot store Twilio's posts; set it here and on the bridge"
        )


async def serve(cfg: Config, ready: asyncio.Event | None = None) -> None:
    """Runs the server until SIGTERM/SIGINT, then drains in-flight calls and returns."""
    check_start(cfg)
    if not (cfg.twilio_from_number or cfg.twilio_messaging_service_sid):
        log.warning(
            "neither TWILIO_FROM_NUMBER nor TWILIO_MESSAGING_SERVICE_SID is set: outbound conversations "
            "are filed under %r and will not meet the replies to them",
            cfg.our_number,
        )
    # Before the stores open: the process metrics already tell an operator about a start-up that hangs.
    metrics.serve(cfg.metrics_addr)
    async with open_resources(cfg) as res:
        server = GatewayServer(cfg, res)
        await server.start()
        stopping = stop_event()
        if ready is not None:
            ready.set()
        await stopping.wait()
        await server.stop()
    log.info("server stopped")


def run(cfg: Config) -> int:
    """Entry point of `sms-gateway server`."""
    asyncio.run(serve(cfg))
    return 0
