"""Scale-out benchmark: `sms-gateway dev --replicas 2` through Envoy while a server, a worker and a bridge die.

Starts the dev stack on free ports with a temp data dir and sends N messages (each Send with a request_id, asked
again on UNAVAILABLE and other broken-connection errors) from several clients, each on its own channel to Envoy,
while subscribers (admins and agents) stream Subscribe through Envoy and resume with their token when their
replica dies. Mid-run it SIGKILLs one server, one worker and one bridge, a few seconds apart; the supervisor
restarts them. Then it checks, as lost / duplicated: messages created at Twilio (the simulator), status callbacks
stored, events each subscriber was entitled to; and that every message reached its final status. It prints the
recovery time after each kill and the end-to-end throughput (Send to SENT) against a single-replica run (no kills)
in the same invocation. The driver is tests/support/scale_out.py, shared with tests/test_scale_out.py.

    .venv/bin/python bench/scale_out.py [--messages 1000] [--replicas 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout: its packages and tests.support

from tests.support.scale_out import Plan, problems, run_plan

# The figures --json writes at the top level (the per-kill and per-subscriber details go under their own keys).
CHECKS = (
    ("Twilio creates", "twilio_creates", "lost_twilio_creates", "duplicated_twilio_creates"),
    ("status callbacks stored", "status_entries_stored", "lost_callbacks", "duplicated_callbacks"),
    ("subscriber events", None, "lost_subscriber_events", "duplicated_subscriber_events"),
)


def _s(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:5.1f}"


def report(scaled: dict[str, Any], single: dict[str, Any] | None) -> list[str]:
    """The printed summary."""
    lines = [
        f"scale-out: {scaled['messages']} messages, {scaled['replicas']} replicas, {scaled['clients']} clients, "
        f"{scaled['in_flight']} in flight, {len(scaled['subscribers'])} subscribers",
    ]
    for title, total, lost, duplicated in CHECKS:
        count = f" ({scaled[total]})" if total else ""
        lines.append(f"  {title + count:<34} lost = {scaled[lost]}   duplicated = {scaled[duplicated]}")
    for name, sub in scaled["subscribers"].items():
        lines.append(
            f"    subscriber {name:<12} expected {sub['expected']:5d}  received {sub['received']:5d}  "
            f"lost = {sub['lost']} (of them in the log: {sub['lost_in_log']})   duplicated = {sub['duplicated']}"
            + (f"   stream stopped: {sub['error']}" if sub["error"] else "")
        )
    lines.append(
        f"  events no server logged: {scaled['events_never_logged']}"
        + (f"  e.g. {scaled['events_never_logged_examples'][:2]}" if scaled["events_never_logged"] else "")
    )
    lines.append(f"  messages not final: {scaled['not_final']}   final statuses: {scaled['final_statuses']}")
    lines.append(f"  Send retries: {scaled['send_retries']}   subscriber reconnects: {scaled['subscriber_reconnects']}")
    for kill in scaled["kills"]:
        lines.append(
            f"  SIGKILL {kill['name']:<9} at {kill['at_s']:5.1f} s: running again after {_s(kill['up_s'])} s, "
            f"serving after {_s(kill['recovery_s'])} s, throughput resumed after {_s(kill['throughput_recovery_s'])} s"
        )
    lines.append(
        f"  end to end (Send to SENT): {scaled['end_to_end_per_s']:6.1f} msg/s   "
        f"Send: {scaled['send_per_s']:6.1f} msg/s"
    )
    if single is not None:
        lines.append(
            f"  single replica, no kills:  {single['end_to_end_per_s']:6.1f} msg/s   Send: {single['send_per_s']:6.1f} "
            f"msg/s   (lost/duplicated checks: {', '.join(problems(single)) or 'all 0'})"
        )
        lines.append(f"  ratio {scaled['replicas']} replicas with kills / 1 replica: {scaled['ratio']:.2f}")
    found = problems(scaled)
    lines.append(
        "  checks: " + ("all lost = 0, duplicated = 0, every message final" if not found else "; ".join(found))
    )
    lines.append(f"  logs: {scaled['log']}" + (f", {single['log']}" if single else ""))
    return lines


def combined(scaled: dict[str, Any], single: dict[str, Any] | None) -> dict[str, Any]:
    """Every figure under stable snake_case keys: the scaled run's at the top, the single run's prefixed."""
    out = dict(scaled)
    if single is not None:
        for key in ("end_to_end_per_s", "send_per_s", "end_to_end_s", "log"):
            out[f"single_replica_{key}"] = single[key]
        out["single_replica_problems"] = problems(single)
    return out


async def bench(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The scaled run with kills, then (unless --no-baseline) the single-replica run without."""
    plan = Plan(
        replicas=args.replicas,
        messages=args.messages,
        clients=args.clients,
        in_flight=args.in_flight,
        subscribers=args.subscribers,
        kills=tuple(args.kill),
        first_kill_s=args.first_kill_s,
        kill_spacing_s=args.kill_spacing_s,
    )
    scaled = await run_plan(plan)
    single = None
    if not args.no_baseline:
        single = await run_plan(
            Plan(
                replicas=1,
                messages=args.messages,
                clients=args.clients,
                in_flight=args.in_flight,
                subscribers=args.subscribers,
                kills=(),
            )
        )
        scaled["ratio"] = scaled["end_to_end_per_s"] / single["end_to_end_per_s"]
    return scaled, single


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages sent in each run")
    parser.add_argument("--replicas", type=int, default=2, help="replicas of the scaled run (2-8)")
    parser.add_argument("--clients", type=int, default=5, help="clients, each with its own channel to Envoy")
    parser.add_argument("--in-flight", type=int, default=50, help="Sends in flight over all clients")
    parser.add_argument("--subscribers", type=int, default=4, help="Subscribe streams (admins and agents, 1-4)")
    parser.add_argument(
        "--kill", action="append", help="a child to SIGKILL (repeatable; default server-1, worker-2, bridge-1)"
    )
    parser.add_argument("--first-kill-s", type=float, default=10.0, help="seconds after the first Send")
    parser.add_argument("--kill-spacing-s", type=float, default=5.0, help="seconds between kills")
    parser.add_argument("--no-baseline", action="store_true", help="skip the single-replica run")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args()
    if args.kill is None:
        args.kill = ["server-1", "worker-2", "bridge-1"]
    if not 2 <= args.replicas <= 8 or not 1 <= args.subscribers <= 4:
        parser.error("--replicas must be 2-8 and --subscribers 1-4")
    scaled, single = asyncio.run(bench(args))
    print("\n".join(report(scaled, single)))
    if args.json:
        args.json.write_text(json.dumps(combined(scaled, single), indent=2, default=str) + "\n")
    return 1 if problems(scaled) else 0


if __name__ == "__main__":
    sys.exit(main())
