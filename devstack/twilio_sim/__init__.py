"""A Twilio Messages API simulator for development and tests: `sms-gateway twilio-simulator`.

It speaks enough of Twilio's REST API that the real `twilio` package works against it unchanged
(`client.api.base_url = "http://127.0.0.1:PORT"`), moves each outbound message through Twilio's statuses
posting signed status callbacks, injects inbound messages as signed webhooks, and misbehaves on request.
Without TWILIO_ACCOUNT_SID / TWILIO_AUTH_TOKEN it uses DEFAULT_ACCOUNT_SID / DEFAULT_AUTH_TOKEN.

One module per part: `rest` (Twilio's Messages API), `control` (the /_sim/ API), `inbound` (injected
messages), `lifecycle` (statuses and status callbacks), `webhooks` (signing, overrides, retries), `rules`
(SMS_SIMULATOR_RULES: misbehaviour on request), `state` (the account's messages, logs and counters),
`shapes` (Twilio's wire formats) and `app` (the aiohttp app, in-process start/stop, the process's `run`).
"""

from devstack.twilio_sim.app import SIMULATOR_KEY, TwilioSimulator, make_app, require_loopback, run
from devstack.twilio_sim.rules import Outcome, Rules, RulesError, load_rules, parse_rules
from devstack.twilio_sim.state import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, DEFAULT_NUMBER

__all__ = [
    "DEFAULT_ACCOUNT_SID",
    "DEFAULT_AUTH_TOKEN",
    "DEFAULT_NUMBER",
    "SIMULATOR_KEY",
    "Outcome",
    "Rules",
    "RulesError",
    "TwilioSimulator",
    "load_rules",
    "make_app",
    "parse_rules",
    "require_loopback",
    "run",
]
