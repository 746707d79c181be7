"""The `sms-gateway` command: one subcommand per process of the system."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from server import logs
from server.config import Config, ConfigError


def _server(cfg: Config, _: argparse.Namespace) -> int:
    from server.app import run

    return run(cfg)


def _worker(cfg: Config, _: argparse.Namespace) -> int:
    from server.worker.settings import run

    return run(cfg)


def _bridge(cfg: Config, _: argparse.Namespace) -> int:
    from webhook_bridge.app import run

    return run(cfg)


def _simulator(cfg: Config, _: argparse.Namespace) -> int:
    from devstack.twilio_sim import run

    return run(cfg)


def _dev(cfg: Config, args: argparse.Namespace) -> int:
    from devstack.stack import run

    return run(cfg, args.replicas)


def _token(cfg: Config, args: argparse.Namespace) -> int:
    from server.auth import check_secrets, mint_token

    cfg.require("SMS_JWT_SECRET")
    check_secrets(SMS_JWT_SECRET=cfg.jwt_secret)
    # The server refuses a token that lives longer than its maximum: refuse to print one.
    if not 0 < args.ttl <= cfg.jwt_max_ttl_seconds:
        raise ConfigError(f"--ttl must be between 1 and SMS_JWT_MAX_TTL_SECONDS ({cfg.jwt_max_ttl_seconds}) seconds")
    try:
        token = mint_token(cfg.jwt_secret, args.user, args.role, ttl_seconds=args.ttl)
    except ValueError as exc:
        raise ConfigError(f"--user: {exc}") from None
    print(token)
    return 0


def _probe(cfg: Config, args: argparse.Namespace) -> int:
    from server.probe import run

    return run(cfg, args)


COMMANDS: dict[str, tuple[str, Callable[[Config, argparse.Namespace], int]]] = {
    "server": ("run the gRPC server (SmsService, SmsIngestService, health, reflection)", _server),
    "worker": ("run the arq worker that sends queued messages through Twilio", _worker),
    "bridge": ("run the webhook bridge that turns Twilio's posts into gRPC calls", _bridge),
    "twilio-simulator": ("run the Twilio simulator (dev and test tool)", _simulator),
    "dev": ("run the whole stack locally", _dev),
    "token": ("print a JWT for local use (needs SMS_JWT_SECRET)", _token),
    "probe": ("check a running server, worker or bridge (exit 0 healthy, 1 not)", _probe),
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `sms-gateway` console script."""
    parser = argparse.ArgumentParser(prog="sms-gateway", description="Two-way SMS for a CRM over gRPC")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, _) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == "token":
            p.add_argument("--user", required=True, help="the user id (JWT sub)")
            p.add_argument("--role", required=True, choices=["agent", "admin", "service"])
            p.add_argument(
                "--ttl", type=int, default=24 * 3600, help="lifetime in seconds (<= SMS_JWT_MAX_TTL_SECONDS)"
            )
        if name == "probe":
            from server.probe import add_arguments

            add_arguments(p)
        if name == "dev":
            p.add_argument(
                "--replicas",
                type=int,
                default=1,
                help="copies of the server, the worker and the bridge (1-8); Envoy balances over them",
            )
    args = parser.parse_args(argv)
    try:
        cfg = Config.from_env()
        # After the settings are read: they choose the format (a settings error is printed, not logged).
        logs.configure(cfg)
        return COMMANDS[args.command][1](cfg, args)
    except ConfigError as exc:
        print(f"sms-gateway {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
