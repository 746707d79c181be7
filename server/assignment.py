"""Who may assign a conversation to whom, and who may update one: the rules of AssignConversation and
UpdateConversation (issue 11), apart from how they are stored (server/inbox.py)."""

from __future__ import annotations

from server.auth import Caller
from server.documents import UNASSIGNED
from server.errors import PermissionDenied
from server.reasons import Reason


def is_claim(caller: Caller, assignee: str) -> bool:
    """Whether an AssignConversation is an agent taking a conversation for themselves."""
    return not caller.sees_all and assignee == caller.user_id


def check_assign(caller: Caller, current: str, assignee: str) -> None:
    """Whether `caller`, who may see the conversation, may move it from `current` to `assignee` (they differ).

    Admins and services assign to anyone or unassign. An agent takes an unassigned conversation for themselves,
    hands their own to another user, or releases it (assignee UNASSIGNED); anything else is PERMISSION_DENIED
    (ASSIGNMENT_NOT_ALLOWED). An agent never reaches here with another agent's conversation: they cannot see it.
    """
    if caller.sees_all:
        return
    if current == caller.user_id:
        return  # hand over or release their own
    if current == UNASSIGNED and assignee == caller.user_id:
        return  # take it
    raise PermissionDenied(
        "agents may only take an unassigned conversation for themselves", Reason.ASSIGNMENT_NOT_ALLOWED
    )


def check_update(caller: Caller, owner: str) -> None:
    """Whether `caller`, who may see the conversation, may change its contact name, contact id and labels.

    Its assignee, admins and services (the CRM syncing names) may. An agent who sees an unassigned conversation
    but has not taken it is PERMISSION_DENIED (NOT_ASSIGNEE): they may read it, and take it to edit it.
    """
    if caller.sees_all or owner == caller.user_id:
        return
    raise PermissionDenied("only the conversation's assignee or an admin may update it", Reason.NOT_ASSIGNEE)
