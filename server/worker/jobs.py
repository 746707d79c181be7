"""The arq job functions; each hands its work to the object start-up put in arq's context."""

from __future__ import annotations

import logging
from typing import Any

from server import log_context
from server.worker.sending import Sending

log = logging.getLogger(__name__)


async def send_message(ctx: dict[str, Any], message_id: str) -> str:
    """Sends one stored message through Twilio, at most once (see server.worker.sending)."""
    sending: Sending = ctx["sending"]
    # Every line of the run carries the message id (and Twilio's sid once the run learns it, sending.py).
    with log_context.bind(message_id=message_id):
        result = await sending.run(message_id)
        # arq logs the result too, but from outside the job's context: this line carries the fields.
        log.info("send_message: %s", result)
        return result
