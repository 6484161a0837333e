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

A connection's held bytes are a `HeldWrites` (one per `H1Downstream` and `H1Connection`),
registered here once per turn; the connection flushes it before it closes or half-closes its
transport, and drops it when the transport is gone.  A client connection's close (the FIN of
a `Connection: close` response, ADR 0069) is held too, behind its bytes (`finish`): written at
once, a closing connection's response woke its reader alone, once per response, while the
turn's other writes went together -- that cost the `Connection: close` path more than holding
saved.  The turn's flush runs as a `call_soon` callback, which
uvloop and asyncio both run after the turn's I/O callbacks and before the next poll.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

WRITE_NOW: Final = 32 * 1024
"""Bytes held on one connection at which its writes stop waiting for the turn's end."""

HALF_CLOSE: Final = 1
"""`HeldWrites.finish`: `write_eof()` after the held bytes (a lingering close's FIN)."""
CLOSE: Final = 2
"""`HeldWrites.finish`: `close()` after the held bytes."""

log: Final = logging.getLogger(__name__)


class TurnWrites:
    """The held writes of one event loop that have bytes in the current turn."""

    __slots__ = ("held", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.held: list[HeldWrites] = []

    def hold(self, w: HeldWrites) -> None:
        """Flush `w` at the end of this turn (once per turn: `w.held` says it is listed)."""
        held = self.held
        if not held:
            self.loop.call_soon(self.run)
        held.append(w)

    def run(self) -> None:
        held = self.held
        self.held = []
        for w in held:
            try:
                w.flush()
            except Exception:  # one connection's failure must not strand the others' bytes
                log.exception("writing held bytes failed")


class HeldWrites:
    """One connection's writes, held to the end of the turn (or to `WRITE_NOW` bytes)."""

    __slots__ = ("end", "held", "join", "out", "size", "transport", "turn")

    def __init__(self, turn: TurnWrites) -> None:
        self.turn = turn
        self.transport: asyncio.Transport | None = None
        """Set by the connection once it has one; None again when it is gone."""
        self.out: list[bytes] = []
        self.size = 0
        self.held = False
        """Listed with `turn` for this turn."""
        self.end = 0
        """What follows the held bytes: 0 nothing, `HALF_CLOSE` or `CLOSE`."""
        self.join = False
        """Several held buffers go out as one (`attach`: a TLS transport)."""

    def attach(self, transport: asyncio.Transport | None) -> None:
        """Write to `transport` from now on (None: the connection is gone).  Whether it is TLS
        is decided here, once per connection, not at each flush: over TLS each buffer given to
        the transport becomes a TLS record of its own (uvloop's and asyncio's SSL protocols
        call `SSL_write` per buffer, ~11,000 instructions each to encrypt and as many to
        decrypt), so there held buffers are joined and a response's head and body are one
        record (ADR 0067); plaintext keeps `writelines` (one `writev`, no copy)."""
        self.transport = transport
        self.join = transport is not None and transport.get_extra_info("ssl_object") is not None

    def write(self, data: bytes) -> None:
        self.out.append(data)
        self.size += len(data)
        if self.size >= WRITE_NOW:
            self.flush()
        elif not self.held:
            self.held = True
            self.turn.hold(self)

    def finish(self, how: int) -> None:
        """Half-close (`HALF_CLOSE`) or close (`CLOSE`) the transport at the end of this turn,
        after what is held; nothing may be written after it."""
        self.end = how
        if not self.held:
            self.held = True
            self.turn.hold(self)

    def flush(self) -> None:
        """Write what is held now (before closing or half-closing, or at the turn's end), then
        the close `finish` held, if any."""
        self.held = False
        out = self.out
        t = self.transport
        if out:
            if t is not None and not t.is_closing():
                if len(out) == 1:
                    t.write(out[0])
                elif self.join and self.size < WRITE_NOW:  # TLS: one record (`attach`)
                    t.write(b"".join(out))
                else:
                    t.writelines(out)
            out.clear()
            self.size = 0
        end = self.end
        if end:
            self.end = 0
            if t is not None and not t.is_closing():
                if end == HALF_CLOSE:
                    t.write_eof()
                else:
                    t.close()

    def drop(self) -> None:
        """Forget what is held, and a held close (the connection is being closed without it)."""
        self.out.clear()
        self.size = 0
        self.end = 0


_current: TurnWrites | None = None


def turn_writes(loop: asyncio.AbstractEventLoop) -> TurnWrites:
    """The `TurnWrites` of `loop` (one per loop; a new loop, as in tests, gets its own)."""
    global _current
    current = _current
    if current is None or current.loop is not loop:
        current = _current = TurnWrites(loop)
    return current
