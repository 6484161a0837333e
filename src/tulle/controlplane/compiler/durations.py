"""Gateway API durations (GEP-2257): `1h`, `30s`, `500ms`, `1h30m`, to integer milliseconds."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+)(h|ms|m|s)")
_UNIT_MS = {"h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}


def to_ms(text: str) -> int:
    """Parse a GEP-2257 duration; raises ValueError with the reason."""
    if not text:
        raise ValueError("empty duration")
    pos = 0
    total = 0
    for m in _PART.finditer(text):
        if m.start() != pos:
            break
        total += int(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    if pos != len(text):
        raise ValueError(f"invalid duration {text!r} (use e.g. 10s, 500ms, 1h30m)")
    return total
