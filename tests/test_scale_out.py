"""Scale-out on loopback: `sms-gateway dev --replicas 2` loses and repeats nothing while a server, a worker and a
bridge are SIGKILLed under load (the short form of bench/scale_out.py; the driver is tests/support/scale_out.py)."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest

from devstack.envoy import EnvoyPorts, envoy_command, render
from devstack.stack import child_specs, decide
from devstack.supervisor import Console
from server.config import Config, without_settings
from server.embedded import free_port
from tests.support.processes import SMS_GATEWAY
from tests.support.scale_out import QUICK_JOBS_ENV, Plan, problems, run_plan

# Paced so that the kills land while messages are still flowing, whatever the machine's load. The server goes
# first: a Send it dies in is finished by the reconciler after its 30 s grace, the longest wait of the three.
PLAN = Plan(
    replicas=2,
    messages=60,
    clients=3,
    in_flight=9,
    subscribers=2,
    kills=("server-1", "worker-2", "bridge-1"),
    first_kill_s=1.5,
    kill_spacing_s=2.0,
    send_rate=10.0,
    final_within=120.0,
    env=tuple(QUICK_JOBS_ENV.items()),
)


async def test_nothing_is_lost_or_repeated_while_replicas_die() -> None:
    result = await run_plan(PLAN)
    where = f"log: {result['log']}; figures: {result}"
    # Every change stored is in the log: a status whose call was cancelled is still announced (the write and its
    # event are shielded from the caller), and one whose server died in between is announced by Twilio's retry.
    assert not problems(result), where
    assert result["twilio_creates"] == PLAN.messages, where
    assert [kill["name"] for kill in result["kills"]] == list(PLAN.kills), where
    assert result["stack_exit_code"] == 0 and not result["children_left"], where
    for name, figures in result["subscribers"].items():
        assert figures["expected"] > 0, (name, figures)


# The stack's shape with replicas, without running it ----------------------------------------------------------
def test_replicas_get_a_port_each_behind_envoy_and_the_same_secrets_rules(tmp_path: Path) -> None:
    cfg = Config.from_env({"SMS_DATA_DIR": str(tmp_path)})
    settings = decide(cfg, {}, replicas=3)
    specs = {spec.name: spec for spec in child_specs(cfg, settings, {}, Console(io.StringIO(), colour=False))}
    for kind in ("server", "worker", "bridge"):
        assert {f"{kind}-{i}" for i in (1, 2, 3)} <= set(specs), sorted(specs)
    servers = [specs[f"server-{i}"].env["SMS_GRPC_ADDR"] for i in (1, 2, 3)]
    bridges = [specs[f"bridge-{i}"].env["SMS_BRIDGE_ADDR"] for i in (1, 2, 3)]
    assert len({*servers, *bridges, cfg.grpc_addr, cfg.bridge_addr}) == 8  # Envoy holds the configured two
    metrics = [
        specs[f"{kind}-{i}"].env["SMS_METRICS_ADDR"] for kind in ("server", "worker", "bridge") for i in (1, 2, 3)
    ]
    assert len(set(metrics)) == 9
    for i in (1, 2, 3):
        bridge = specs[f"bridge-{i}"].env
        # Ingest goes through Envoy's gRPC listener; Twilio signs for Envoy's webhook listener, the public URL.
        assert bridge["SMS_GRPC_TARGET"] == cfg.grpc_addr and "SMS_JWT_SECRET" not in bridge
        assert bridge["SMS_PUBLIC_BASE_URL"] == f"http://{cfg.bridge_addr}"
    # The bridges start once Envoy, their way to a server, is up.
    order = list(specs)
    assert order.index("envoy") < order.index("bridge-1")


def test_a_replicated_envoy_config_passes_envoy_validate(tmp_path: Path) -> None:
    ports = EnvoyPorts(
        f"127.0.0.1:{free_port()}",
        f"127.0.0.1:{free_port()}",
        free_port(),
        grpc_replicas=("127.0.0.1:50061", "127.0.0.1:50062"),
        bridge_addr=f"127.0.0.1:{free_port()}",
        bridge_replicas=("127.0.0.1:8091", "localhost:8092"),
    )
    config = render(ports, tmp_path / "envoy.yaml", tmp_path / "no-dist")
    cmd = envoy_command(config)
    result = subprocess.run([cmd[0], "--mode", "validate", *cmd[1:]], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    text = config.read_text()
    assert "50061" in text and "50062" in text and "8092" in text and "grpc_health_check" in text


@pytest.mark.parametrize("replicas", ["0", "9"])
def test_a_replica_count_out_of_bounds_is_refused(replicas: str) -> None:
    env = {**without_settings(os.environ), "SMS_DATA_DIR": "/nonexistent/never-created"}
    result = subprocess.run(
        [*SMS_GATEWAY, "dev", "--replicas", replicas], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "--replicas must be between 1 and 8" in result.stderr
