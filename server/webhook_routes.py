"""The paths Twilio posts to: served by the bridge, named in the worker's StatusCallback, used by the simulator."""

from __future__ import annotations

INBOUND_PATH = "/twilio/inbound"
STATUS_PATH = "/twilio/status"
