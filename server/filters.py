"""ListConversations' `filter`: the AIP-160 subset it accepts, parsed into a `ConversationFilter`.

Grammar (terms joined by AND; no OR, no parentheses):

    filter := term { "AND" term }
    term   := [ "NOT" | "-" ] flag | field ( "=" | ":" ) value
    flag   := unread | unassigned | opted_out
    field  := label | labels | assignee | contact_id
    value  := "quoted string" (\\" and \\\\ escape) | bare word (letters, digits, _ . @ + -)

`label = "vip"` (or `labels:"vip"`, AIP-160's "has") keeps conversations carrying that label; several label
terms must all hold. `assignee = "bob"` is for admins and services; an agent may name only themself (anyone else
is PERMISSION_DENIED, FILTER_NOT_ALLOWED). `contact_id = "crm-42"` is the CRM's view of one contact's thread.
Anything else is INVALID_ARGUMENT (INVALID_FILTER) naming the problem and quoting a short piece of the input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from server import limits
from server.errors import InvalidArgument
from server.reasons import Reason

FIELD = "filter"
FLAGS = ("unread", "unassigned", "opted_out")
FIELDS = ("label", "labels", "assignee", "contact_id")

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<op>!=|<=|>=|=|:|<|>|\(|\)|~)
      | (?P<word>[A-Za-z0-9_.@+\-]+)
      | (?P<bad>\S)
    )""",
    re.VERBOSE,
)
_UNTERMINATED = re.compile(r'\s*"')


@dataclass(frozen=True)
class ConversationFilter:
    """What a filter asks for; None: not constrained."""

    unread: bool | None = None
    unassigned: bool | None = None
    opted_out: bool | None = None
    labels: tuple[str, ...] = ()
    assignee: str | None = None
    contact_id: str | None = None
    canonical: str = field(default="", compare=False)


def _bad(what: str) -> InvalidArgument:
    return InvalidArgument(FIELD, what, Reason.INVALID_FILTER)


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if not text[pos:].strip():
            break
        m = _TOKEN.match(text, pos)
        if m is None or m.lastgroup is None:  # pragma: no cover - the pattern matches any non-space
            raise _bad(f"cannot read {limits.quote(text[pos:])}")
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "bad":
            if _UNTERMINATED.match(text, pos):
                raise _bad(f"unterminated string at {limits.quote(text[pos:].strip())}")
            raise _bad(f"unexpected {limits.quote(value)} at position {m.start(kind) + 1}")
        out.append((kind, value))
        pos = m.end()
    return out


def _unquote(token: str) -> str:
    return re.sub(r"\\(.)", r"\1", token[1:-1])


def parse(text: str) -> ConversationFilter:
    """The filter `text` names (the empty filter for a blank one); INVALID_ARGUMENT for anything else."""
    limits.text(FIELD, text, limits.FILTER_BYTES)
    tokens = _tokens(text)
    flags: dict[str, bool] = {}
    labels: list[str] = []
    values: dict[str, str] = {}
    parts: list[str] = []
    i = 0
    while i < len(tokens):
        if parts:
            kind, value = tokens[i]
            if kind == "word" and value.upper() == "OR":
                raise _bad("OR is not supported: terms are joined by AND")
            if not (kind == "word" and value == "AND"):
                raise _bad(f"expected AND before {limits.quote(value)}")
            i += 1
            if i == len(tokens):
                raise _bad("a term is missing after AND")
        negated = False
        kind, value = tokens[i]
        if (kind, value) in (("word", "NOT"), ("word", "-")) or (kind == "word" and value.startswith("-")):
            negated = True
            if value.startswith("-") and value != "-":
                value = value[1:]
            else:
                i += 1
                if i == len(tokens):
                    raise _bad("a term is missing after NOT")
                kind, value = tokens[i]
        if kind == "op" and value in "()":
            raise _bad("parentheses are not supported")
        if kind != "word":
            raise _bad(f"expected a field name, got {limits.quote(value)}")
        name = value
        following = tokens[i + 1] if i + 1 < len(tokens) else None
        if name in FLAGS:
            if following is not None and following[0] == "op":
                raise _bad(f"{name} takes no operator: write `{name}` or `NOT {name}`")
            if name in flags and flags[name] == negated:
                raise _bad(f"{name} is given twice with opposite meanings")
            flags[name] = not negated
            parts.append(("NOT " if negated else "") + name)
            i += 1
            continue
        if name not in FIELDS:
            known = ", ".join((*FLAGS, "label", "assignee", "contact_id"))
            raise _bad(f"unknown field {limits.quote(name)}; known: {known}")
        if negated:
            raise _bad(f"NOT is supported only before {', '.join(FLAGS)}")
        if following is None:
            raise _bad(f'{name} needs a value: {name} = "..."')
        op = following[1]
        allowed = (":", "=") if name in ("label", "labels") else ("=",)
        if following[0] != "op" or op not in allowed:
            raise _bad(f"{name} supports {' and '.join(allowed)} only, got {limits.quote(op)}")
        if i + 2 >= len(tokens):
            raise _bad(f"{name} {op} needs a value")
        vkind, raw = tokens[i + 2]
        if vkind not in ("string", "word") or (vkind == "word" and raw in ("AND", "NOT")):
            raise _bad(f"{name} {op} needs a value, got {limits.quote(raw)}")
        val = _unquote(raw) if vkind == "string" else raw
        if name in ("label", "labels"):
            limits.text(FIELD, val, limits.LABEL_BYTES)
            labels.append(val)
        else:
            bound = limits.USER_ID_BYTES if name == "assignee" else limits.CONTACT_ID_BYTES
            limits.text(FIELD, val, bound)
            if name in values and values[name] != val:
                raise _bad(f"{name} is given twice with different values")
            values[name] = val
        parts.append(f"{'label' if name == 'labels' else name} = {val!r}")
        i += 3
    return ConversationFilter(
        unread=flags.get("unread"),
        unassigned=flags.get("unassigned"),
        opted_out=flags.get("opted_out"),
        labels=tuple(dict.fromkeys(labels)),
        assignee=values.get("assignee"),
        contact_id=values.get("contact_id"),
        canonical=" AND ".join(sorted(set(parts))),
    )
