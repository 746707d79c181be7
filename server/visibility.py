"""Who may see which conversation: the one rule, used by every read, list, search and stream."""

from __future__ import annotations

from server.auth import Caller
from server.config import Config
from server.documents import UNASSIGNED


def visible_owners(cfg: Config, caller: Caller) -> tuple[str, ...] | None:
    """The owners whose conversations `caller` may see; None: every conversation (admins and services).

    An agent sees their own, and the unassigned ones while SMS_UNASSIGNED_VISIBLE_TO_AGENTS is on; never
    another agent's.
    """
    if caller.sees_all:
        return None
    if cfg.unassigned_visible_to_agents:
        return (caller.user_id, UNASSIGNED)
    return (caller.user_id,)


def may_see(cfg: Config, caller: Caller, owner: str) -> bool:
    """Whether `caller` may see a conversation (or an event of one) that belongs to `owner`."""
    owners = visible_owners(cfg, caller)
    return owners is None or owner in owners
