"""A record's start time as Envoy's default `%START_TIME%` writes it, made cheaply.

Why a module: the access log's records (through `access_record.record_fields`, when the C
line encoder does not write the time itself), the flow log's records and the tests all spell
the time the same way; the access log and the flow log both import this, and it is compiled
with them (`tulle.native.COMPILED`).  The C line encoder (`_aline.c`) writes the same text from
the same nanoseconds; a test holds them equal.
"""

from __future__ import annotations

import time
from typing import Final

_MILLIS: Final = tuple(f"{ms:03d}Z" for ms in range(1000))
"""`000Z` to `999Z`: a start time's last characters, made once (a `:03d` format cost ~0.6 µs,
paid by every request when requests are more than a millisecond apart)."""


class _StartClock:
    """The last second formatted up to the milliseconds (one strftime a second), then the
    last millisecond and its whole text (under load many requests end in the same one).
    Typed fields, not a list: a millisecond's text is then one concatenation, no boxing."""

    __slots__ = ("ms", "prefix", "sec", "text")

    def __init__(self) -> None:
        # The epoch, cached as if just formatted: every int is a valid time (a clock set before
        # 1970 gives negative ones), so a sentinel such as -1 would be taken for a real
        # millisecond or second and return "" or a text without its date.
        self.sec = 0
        self.prefix = "1970-01-01T00:00:00."
        self.ms = 0
        self.text = "1970-01-01T00:00:00.000Z"


_clock: Final = _StartClock()


def start_time(ns: int) -> str:
    """Envoy's default `%START_TIME%`: `2026-12-03T15:04:05.123Z` (UTC, milliseconds)."""
    ms = ns // 1_000_000
    clock = _clock
    if clock.ms == ms:
        return clock.text
    sec = ms // 1000
    if clock.sec != sec:
        clock.prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(sec))
        clock.sec = sec
    text = clock.prefix + _MILLIS[ms - sec * 1000]
    clock.ms = ms
    clock.text = text
    return text


__all__ = ["start_time"]
