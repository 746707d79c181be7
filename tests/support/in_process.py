"""The fast tier: the gRPC server, the webhook bridge and the Twilio simulator inside the test's event loop, and
arq's Worker in burst mode, over the session's real SecantusDB and Valkey. A rule's test needs no subprocess."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import grpc
from sms.v1 import ingest_pb2_grpc, sms_pb2_grpc

from devstack.twilio_sim import TwilioSimulator, parse_rules
from server.app import GatewayServer
from server.config import Config
from server.embedded import free_port
from server.resources import Resources, open_resources
from server.worker.settings import work
from tests.support.identities import INGEST_SECRET, JWT_SECRET, bridge_env
from webhook_bridge.app import build_app, make_runner, make_site

SIM_ACCOUNT_SID = "AC" + "0" * 32
SIM_AUTH_TOKEN = "in-process-simulator-token"
FROM_NUMBER = "+15005550006"


@dataclass
class House:
    """Everything of one in-process stack: its config and resources, stubs to its server, its simulator."""

    cfg: Config
    res: Resources
    sms: sms_pb2_grpc.SmsServiceAsyncStub
    ingest: ingest_pb2_grpc.SmsIngestServiceAsyncStub
    sim: TwilioSimulator
    # Every setting of this stack, e.g. to start `sms-gateway worker` processes on it.
    env: dict[str, str]

    async def work(self) -> None:
        """Runs an arq worker with the project's settings until the queue is empty (burst mode)."""
        await work(self.cfg, burst=True)

    def set_rules(self, **rules: Any) -> None:
        """Replaces the simulator's rules (see devstack/twilio_sim/rules.py)."""
        self.sim.replace_rules(parse_rules(rules))


def house_env(mongodb_uri: str, redis_url: str, **overrides: str) -> dict[str, str]:
    """The settings of an in-process stack with its own database, queue and event stream."""
    unique = uuid.uuid4().hex[:8]
    return {
        "MONGODB_URI": mongodb_uri,
        "MONGODB_DB": f"sms_inproc_{unique}",
        "REDIS_URL": redis_url,
        "SMS_ARQ_QUEUE": f"arq:inproc:{unique}",
        "SMS_EVENT_STREAM": f"sms:events:inproc:{unique}",
        "SMS_JWT_SECRET": JWT_SECRET,
        "SMS_INGEST_SECRET": INGEST_SECRET,
        "SMS_DEFAULT_REGION": "US",
        "TWILIO_ACCOUNT_SID": SIM_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": SIM_AUTH_TOKEN,
        "TWILIO_FROM_NUMBER": FROM_NUMBER,
        "SMS_RETRY_DELAYS": "0.05",
        "SMS_SYNC_INTERVAL_SECONDS": "0",
        "SMS_HEARTBEAT_SECONDS": "1",
        **overrides,
    }


@contextlib.asynccontextmanager
async def running_house(env: Mapping[str, str]) -> AsyncIterator[House]:
    """Starts the simulator, the server and the bridge in this event loop; stops them on exit."""
    grpc_port, bridge_port = free_port(), free_port()
    public = f"http://127.0.0.1:{bridge_port}"
    settings = {
        **env,
        "SMS_GRPC_ADDR": f"127.0.0.1:{grpc_port}",
        "SMS_BRIDGE_ADDR": f"127.0.0.1:{bridge_port}",
        "SMS_PUBLIC_BASE_URL": public,
    }
    sim = TwilioSimulator(Config.from_env(settings))
    sim_url = await sim.start()
    settings["TWILIO_API_BASE_URL"] = sim_url
    cfg = Config.from_env(settings)
    bridge_cfg = Config.from_env(bridge_env({**settings, "TWILIO_API_BASE_URL": sim_url}))
    bridge = make_runner(bridge_cfg, build_app(bridge_cfg))
    try:
        async with open_resources(cfg) as res:
            server = GatewayServer(cfg, res)
            await server.start()
            await bridge.setup()
            await make_site(bridge_cfg, bridge, "127.0.0.1", bridge_port).start()
            try:
                async with grpc.aio.insecure_channel(cfg.grpc_addr) as channel:
                    yield House(
                        cfg,
                        res,
                        cast("sms_pb2_grpc.SmsServiceAsyncStub", sms_pb2_grpc.SmsServiceStub(channel)),
                        cast(
                            "ingest_pb2_grpc.SmsIngestServiceAsyncStub", ingest_pb2_grpc.SmsIngestServiceStub(channel)
                        ),
                        sim,
                        settings,
                    )
            finally:
                await bridge.cleanup()
                await server.stop()
    finally:
        await sim.stop()
