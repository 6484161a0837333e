"""Small writes leave at the end of the event loop's turn, all together (ADR 0065).

One turn of the loop hands the proxy every socket that became readable (under load, ten to
twenty of them).  Writing each response the moment it is ready spreads the writes over the
whole turn, a few µs apart; the reader on the other side (the client, the origin) is woken
by the first, handles it, goes back to sleep before the next arrives, and is woken again: a
cross-CPU wake-up per write, which in a virtual machine costs more than the proxy's own work
for the request (a profile of the HTTP/1 proxy under wrk put 23% of its CPU in the kernel's
wake-up of the reader, against 9% for HAProxy).  Holding small writes until the turn's I/O
callbacks are done and writing them back to back lets one wake-up serve them all.

The cost is latency, bounded by one turn: a response ready at the start of a turn leaves after
the turn's other callbacks have run (tens of µs under load, nothing when one socket is ready).
Large writes (`WRITE_NOW` bytes or more held on one connection) go at once: they cost a copy
per byte, not a wake-up, and holding them would only hold memory.

A connection that holds bytes (`H1Downstream`, `H1Connection`) is registered here once per turn
and must write what it holds before it closes or half-closes its transport (its `flush`), and
drop it when the transport is gone.  The turn's flush runs as a `call_soon` callback, which
uvloop and asyncio both run after the turn's I/O callbacks and before the next poll.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, Protocol

WRITE_NOW: Final = 32 * 1024
"""Bytes held on one connection at which its writes stop waiting for the turn's end."""

log = logging.getLogger(__name__)


class Holder(Protocol):
    """A connection holding bytes for the end of the turn."""

    def flush(self) -> None:
        """Write what is held (nothing if the transport is gone)."""


class TurnWrites:
    """The connections of one event loop that hold bytes in the current turn."""

    __slots__ = ("held", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.held: list[Holder] = []

    def hold(self, conn: Holder) -> None:
        """Flush `conn` at the end of this turn (call once per turn: the caller keeps a flag)."""
        held = self.held
        if not held:
            self.loop.call_soon(self.run)
        held.append(conn)

    def run(self) -> None:
        held = self.held
        self.held = []
        for conn in held:
            try:
                conn.flush()
            except Exception:  # one connection's failure must not strand the others' bytes
                log.exception("writing held bytes failed")


_current: TurnWrites | None = None


def turn_writes(loop: asyncio.AbstractEventLoop) -> TurnWrites:
    """The `TurnWrites` of `loop` (one per loop; a new loop, as in tests, gets its own)."""
    global _current
    current = _current
    if current is None or current.loop is not loop:
        current = _current = TurnWrites(loop)
    return current
