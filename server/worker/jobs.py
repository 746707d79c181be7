"""The arq job functions; each hands its work to the object start-up put in arq's context."""

from __future__ import annotations

from typing import Any

from server.worker.sending import Sending


async def send_message(ctx: dict[str, Any], message_id: str) -> str:
    """Sends one stored message through Twilio, at most once (see server.worker.sending)."""
    sending: Sending = ctx["sending"]
    return await sending.run(message_id)
