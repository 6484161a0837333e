"""An `auto` listener's connection: the HTTP/1 driver, sniffing its own first bytes.

Most connections on an `auto` listener speak HTTP/1.  `DetectDownstream` decides what a
connection is and then hands its transport to a new driver object (`transport.set_protocol`,
a second admission, a second object); for HTTP/1 that hand-over was most of what detection
cost a connection (ADR 0073).  `H1SniffDownstream` is an `H1Downstream` that starts out
sniffing instead:

* **Opening.**  It is admitted, its facts read and its write buffer set up as any HTTP/1
  connection's, then it joins the listener's `SilenceWatch` (one detection timer per
  listener, ADR 0071).  While it sniffs it has no header deadline and the flow log does not
  follow it: both start when its first bytes say HTTP/1, as they did at the hand-over.  A
  listener port in `opaque_ports` (or `DEFAULT_OPAQUE_PORTS`) is never sniffed: the
  connection goes to a `DetectDownstream` at once.
* **HTTP/1.**  When the bytes so far are the start of a request-line (`protocols.detect`), it
  leaves the watch, counts `http1`, and from then on *is* the HTTP/1 driver: the same bytes go
  to the same parser, limits and errors as on an `http1` listener.  No hand-over.
* **Anything else** -- HTTP/2, TLS, TCP, bytes that stay undecided up to `MAX_SNIFF_BYTES`,
  a client that stays silent (or sends a prefix and stops) until `detect_timeout_ms`, an EOF
  while undecided -- goes to a `DetectDownstream` (`DetectDownstream.take_over`), which makes
  that decision exactly as it does for a connection it sniffed itself: one place decides
  everything but HTTP/1.
* **A drain while sniffing** closes the connection as a drain closes an idle HTTP/1
  connection: a lingering close (FIN, then what the client still sends is read and dropped),
  never a reset; a client that opened its connection ahead of its first request (a pool
  warming up) sees an orderly close and opens a new one.  An abort resets it.

Only explicit plain `auto` listeners use it (`listeners.factory`); transparent listeners, whose
original destination picks a rule first, and `tcp` listeners keep `DetectDownstream`.
"""

from __future__ import annotations

import asyncio
from typing import cast

from tulle.dataplane.listeners.detect import DetectDownstream, SilenceWatch
from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.listeners.http1 import H1Downstream
from tulle.dataplane.protocols.detect import MAX_SNIFF_BYTES, detect_next


class H1SniffDownstream(H1Downstream):
    """An `auto` listener's connection: HTTP/1 once its first bytes say so, else handed over."""

    def __init__(self, handle: ListenerHandle, watch: SilenceWatch) -> None:
        super().__init__(handle)
        self.watch = watch
        self.sniffing = True
        """Its protocol is not decided yet."""
        self.sniffed = b""
        """What it sent while undecided (a prefix shorter than any decision)."""
        self.watched = False
        """In `watch`'s queue (`listeners.detect.Sniffing`)."""
        self.detect_at = 0.0
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        ctx = self.ctx
        port = ctx.cfg.port
        if not port:  # bound to a port the kernel chose
            local = t.get_extra_info("sockname")
            port = int(local[1]) if isinstance(local, tuple) else 0
        if port in ctx.opaque_ports:
            self._never_sniff(t)
            return
        super().connection_made(t)
        if self.transport is None:  # refused (a limit): reset already
            self.sniffing = False
            return
        self.deadline = 0.0  # the silence watch governs until it is HTTP/1
        self.deadline_kind = ""
        handle = self.handle
        if handle.flows:
            handle.unfollow(self)  # followed once it is HTTP/1
        self.watch.add(self, self.loop, ctx.cfg.detect_timeout_ms / 1000)

    def data_received(self, data: bytes) -> None:
        if self.sniffing:
            before = self.sniffed
            if not before:
                self.header_from = self.loop.time()  # a request head's time starts here
            buf = before + data if before else data
            protocol = detect_next(buf, len(before)).protocol  # (no rescan of `before`)
            if protocol != "http1":
                if protocol == "need_more" and len(buf) < MAX_SNIFF_BYTES:
                    self.sniffed = buf
                    return
                self._hand_over(b"").data_received(buf)  # it decides (and counts)
                return
            self._is_http1()
            data = buf
        super().data_received(data)

    def eof_received(self) -> bool:
        if self.sniffing:
            t = self.transport
            if not self.sniffed or t is None:
                self._stop_sniffing()
                return False  # gone before saying anything (as `DetectDownstream`)
            return self._hand_over(self.sniffed).eof_received()
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.sniffing:
            self._stop_sniffing()
        super().connection_lost(exc)

    # -- Connection ----------------------------------------------------------------------

    def start_drain(self) -> None:
        if self.sniffing:  # nothing in flight: closed as an idle HTTP/1 connection is
            self._stop_sniffing()
        super().start_drain()

    def abort(self) -> None:
        if self.sniffing:
            self._stop_sniffing()
        super().abort()

    # -- detection -----------------------------------------------------------------------

    def _on_timeout(self) -> None:
        """`detect_timeout_ms` passed while sniffing (`SilenceWatch`): the detector decides
        what a silent or trickling client gets (a relay, a close, or the HTTP driver)."""
        self._timer = None
        if self.sniffing and self.transport is not None:
            self._hand_over(self.sniffed)._on_timeout()

    def _is_http1(self) -> None:
        self._stop_sniffing()
        ctx = self.ctx
        self.watch.counter(ctx, "http1").value += 1
        self.set_first_header_deadline()
        handle = self.handle
        if handle.ctx.flow_log is not None:
            handle.follow(self)

    def _stop_sniffing(self) -> None:
        self.sniffing = False
        self.sniffed = b""
        self.watch.forget(self)

    def _hand_over(self, buffered: bytes) -> DetectDownstream:
        """Give the connection to a `DetectDownstream` (it is not HTTP/1, or not yet decided)."""
        t = cast(asyncio.Transport, self.transport)
        self._stop_sniffing()
        self._let_go()
        detector = DetectDownstream(self.handle, self.watch)
        detector.first_at = self.header_from  # (0 when nothing came yet)
        detector.take_over(t, self, buffered)
        return detector

    def _never_sniff(self, t: asyncio.Transport) -> None:
        """A listener port that is never sniffed: `DetectDownstream` relays it at once."""
        self.sniffing = False
        self._let_go()
        detector = DetectDownstream(self.handle, self.watch)
        t.set_protocol(detector)
        detector.connection_made(t)

    def _let_go(self) -> None:
        """This object serves the connection no more: no writes, no parser, no deadline."""
        self.transport = None
        self.closing = True
        self.deadline = 0.0
        self.outq.attach(None)
        self.codec.close()
