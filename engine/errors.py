"""The one exception type whose message is meant for the user, and how user-given text appears in messages."""
from __future__ import annotations

import re

_SPACES = re.compile(r"\s+")


class UserError(Exception):
    """A problem the user can fix; the message is one sentence saying what happened and what to do."""


def shown(value: object, limit: int = 40) -> str:
    """User-given text (an id, a name) as a message quotes it: one line, control characters as '?', at most
    `limit` characters then '…' — a 100 KB id must not become a 100 KB error line."""
    text = "".join(c if c.isprintable() else "?" for c in str(value)[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "…"


def one_line(text: object, limit: int = 600) -> str:
    """Any message as one line of at most `limit` characters (line breaks and runs of spaces become one space)."""
    flat = _SPACES.sub(" ", str(text)).strip()
    return flat if len(flat) <= limit else flat[:limit] + "…"
