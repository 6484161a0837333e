"""What a proxy says about itself, made safe to log, keep and show.

Why: strings a peer chooses -- a hello's workload name and namespace and contract versions
(before it is authenticated), an admitted proxy's NACK reason and paths, ACKed version and
trust-bundle id -- went as they were into the control plane's log lines, into the memory
kept to log each refused proxy once, and into the proxy status that `tulle get proxies` and
`tulle describe` print.  A newline forged a log line; an escape sequence (`ESC ] 52`: set the
clipboard; `ESC [ 2J`: clear the screen) reached the operator's terminal; a 60 KB name was
kept 4,096 times (attack review A1, ADR 0045).  `shown` bounds the length and writes every
control or bidirectional-override character as a visible escape.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

SHOWN = 200
"""Characters of one peer-chosen string that are logged or kept (names, versions, ids)."""
SHOWN_REASON = 2000
"""... of a NACK reason (it names the field at fault and why)."""
SHOWN_ITEMS = 64
"""Entries of a peer-chosen list that are kept (NACK paths, features)."""

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def shown(text: object, limit: int = SHOWN) -> str:
    """`text` at most `limit` characters long (saying how many were left out), control and
    bidi characters escaped."""
    s = str(text)
    more = len(s) - limit
    if more > 0:
        s = s[:limit]
    s = _UNSAFE.sub(_escape, s)
    return f"{s}...({more} more characters)" if more > 0 else s


def shown_list(items: Iterable[object], limit: int = SHOWN) -> list[str]:
    """The first `SHOWN_ITEMS` entries, each `shown`."""
    out: list[str] = []
    for i, x in enumerate(items):
        if i == SHOWN_ITEMS:
            out.append("...")
            break
        out.append(shown(x, limit))
    return out
