"""Server-side TLS for listeners: a context from files, with ALPN, and the handshake itself.

The context object stays the same for the listener's life; certificate rotation (zero-trust
issue) calls `load_cert_chain` on it again, which affects new handshakes only.

Why the proxy drives the handshake (`loop.start_tls` on an accepted plain connection) rather
than passing `ssl=` to `create_server`: with `ssl=`, asyncio and uvloop call the protocol's
`connection_made` only once the handshake is done and tell the protocol nothing about one that
fails or times out.  A connection in its handshake would hold a descriptor without counting
against any cap (`Listener.max_connections`, `settings.max_connections`, the overload guard's
descriptor estimate), and a silent client would hold it for the loop's default 60 s.
`TLSAccept` is the protocol of the plain connection: it is admitted (or reset) at accept, like
any other connection, holds its slot through the handshake (bounded by
`settings.tls_handshake_timeout_ms`), releases it when the handshake fails, and otherwise hands
the slot and the TLS transport to the driver chosen by ALPN.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from tulle.dataplane.listeners.admission import peer_address
from tulle.dataplane.listeners.context import Connection, reset
from tulle.dataplane.runtime.tls import build_server_context
from tulle.dataplane.tlsread import TLSReader
from tulle.proxyconfig.model import TLSContext

if TYPE_CHECKING:
    from tulle.dataplane.listeners.handle import ListenerHandle

log = logging.getLogger("tulle.proxy")

Starter = Callable[[asyncio.Transport, bytes], object]
"""Takes a live TLS transport and the bytes already decrypted (a TCP relay, ADR 0030)."""

DriverChoice = Callable[[str | None], asyncio.Protocol | Starter | None]
"""Builds the driver for the negotiated ALPN protocol (None when the client offered none): an
HTTP driver (a Protocol), or a starter that takes the transport over (the TCP relay of a
`tulle-tcp` stream); None refuses the connection (counted as `tls_alpn`)."""

_CLIENT_CERT_REASONS = frozenset({
    "PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_VERIFY_FAILED",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED", "SSLV3_ALERT_BAD_CERTIFICATE",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED", "TLSV1_ALERT_UNKNOWN_CA"})
"""OpenSSL reasons of a handshake that failed on the client's certificate (missing, from
another CA, expired): counted as `tls_client_certificate`, apart from other failures."""


TIMER_SLACK = 0.002
"""Seconds a loop timer may fire early against `loop.time()`: libuv keeps whole milliseconds,
so a 300 ms handshake timeout can fire when the clock has moved 299.9 ms."""


def handshake_timed_out(elapsed: float, timeout_ms: int) -> bool:
    """A failed handshake that took `elapsed` seconds was the timeout of `timeout_ms` (0: none)."""
    return bool(timeout_ms) and elapsed >= timeout_ms / 1000 - TIMER_SLACK


def _failure_kind(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason in _CLIENT_CERT_REASONS:
        return "tls_client_certificate"
    return "tls_handshake"


def server_ssl_context(tls: TLSContext) -> ssl.SSLContext:
    """A fresh server context (the proxy shares them: `tulle.dataplane.runtime.tls`)."""
    return build_server_context(tls)


class TLSAccept(asyncio.Protocol, Connection):
    """A TLS connection from accept until its handshake is done (see the module docstring).

    Registered with the listener handle at accept (refused there like any connection beyond a
    cap); the handshake runs in a task.  On success the handle's slot passes to the driver
    (`ListenerHandle.hand_over`) and the TLS transport with it; application data the TLS layer
    decrypted before the hand-over is passed on.  On failure, timeout, drain or abort the
    connection is closed and its slot released, counted in
    `tulle_proxy_protocol_errors_total{kind="tls_handshake"}` (or `tls_handshake_timeout`, or
    `tls_client_certificate` when the client's certificate was refused)."""

    def __init__(self, handle: ListenerHandle, sslcontext: ssl.SSLContext,
                 choose: DriverChoice) -> None:
        self.handle = handle
        self._sslcontext = sslcontext
        self._choose = choose
        self._transport: asyncio.Transport | None = None
        self._task: asyncio.Task[None] | None = None
        self._early: list[bytes] = []
        """Application data decrypted between the end of the handshake and the hand-over."""
        self._raw: list[bytes] = []
        """Bytes read from the socket before `start_tls` took the transport (see above)."""
        self._started = False
        self._eof = False
        self._lost = False

    # -- the plain connection -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t = cast(asyncio.Transport, transport)
        t.pause_reading()  # nothing is read before the TLS layer takes over
        if not self.handle.connection_opened(self):
            reset(t)
            return
        self._transport = t
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._handshake(t))
        # uvloop starts reading only after `connection_made` returns, so the pause above may
        # not hold until the task's first step (where `start_tls` takes the transport over):
        # a ClientHello read meanwhile is kept in `_raw` and given to the TLS layer once it is
        # connected.  `start_tls` queues that connection (and its resume_reading) in the
        # task's first step; `_after_start` runs right after that step and queues the hand-on
        # behind them, before any further read.
        loop.call_soon(self._after_start, loop)

    def _after_start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._raw:
            loop.call_soon(self._feed_raw)

    def _feed_raw(self) -> None:
        t = self._transport
        raw, self._raw = b"".join(self._raw), []
        if t is None or t.is_closing():
            return
        proto = t.get_protocol()
        if proto is self:  # pragma: no cover - start_tls did not take the transport
            return
        if hasattr(proto, "get_buffer"):  # uvloop's SSLProtocol is not a BufferedProtocol
            proto = cast(asyncio.BufferedProtocol, proto)
            view = memoryview(raw)
            while view:
                buf = memoryview(proto.get_buffer(len(view)))
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                proto.buffer_updated(n)
                view = view[n:]
        else:
            cast(asyncio.Protocol, proto).data_received(raw)

    async def _handshake(self, plain: asyncio.Transport) -> None:
        handle = self.handle
        ms = handle.ctx.settings.tls_handshake_timeout_ms
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._started = True  # from here the TLS layer is the transport's protocol
        try:
            tls = await loop.start_tls(
                plain, self, self._sslcontext, server_side=True,
                ssl_handshake_timeout=ms / 1000 if ms else None)
        except asyncio.CancelledError:
            self._release(plain)
            raise
        except Exception as exc:  # any failure ends this connection alone
            # The loop reports a timeout as one of several exception types; the clock is
            # what says it was one.
            timed_out = handshake_timed_out(loop.time() - started, ms)
            handle.ctx.protocol_error("tls_handshake_timeout" if timed_out
                                      else _failure_kind(exc))
            log.debug("listener %s: TLS handshake failed: %r", handle.name, exc)
            self._release(plain)
            return
        if tls is None or self._lost or self._transport is None:
            self._release(plain)
            return
        ssl_object = tls.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        driver = self._choose(alpn)
        if driver is None:
            handle.ctx.protocol_error("tls_alpn")
            tls.abort()
            self._release(plain)
            return
        handle.hand_over(self)
        self._transport = None
        if not isinstance(driver, asyncio.BaseProtocol):  # a relay takes the transport over
            early, self._early = b"".join(self._early), []
            driver(tls, early)
            successor = tls.get_protocol()
            if self._eof and successor is not self:
                eof = getattr(successor, "eof_received", None)
                if eof is not None and not eof():
                    tls.close()
            return
        tls.set_protocol(TLSReader(driver))  # decrypted into a shared buffer (ADR 0063)
        driver.connection_made(tls)
        for data in self._early:
            driver.data_received(data)
        self._early.clear()
        if self._eof and not driver.eof_received():
            tls.close()

    def _release(self, plain: asyncio.Transport) -> None:
        self._transport = None
        if not plain.is_closing():
            plain.abort()
        self.handle.connection_closed(self)

    # -- what the TLS layer reports before the hand-over -----------------------------------

    def data_received(self, data: bytes) -> None:
        if self._task is not None and not self._started:
            self._raw.append(data)  # ciphertext read before start_tls took over (uvloop)
            if self._transport is not None:
                self._transport.pause_reading()
            return
        self._early.append(data)

    def eof_received(self) -> bool | None:
        """The driver decides, once it has the connection (`_eof`).  Before `start_tls` took
        the socket, a plain half-close keeps it open (the handshake may still answer); from
        the TLS layer, a close_notify shuts the transport down whatever this answers, and a
        True only made uvloop log a warning (as for `TLSReader`)."""
        self._eof = True
        return not self._started

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._transport is not None and not self._started:
            # Gone before the handshake began; once it has, `_handshake` learns of it from
            # start_tls (and counts it) or from `_lost`, and releases the slot.
            t, self._transport = self._transport, None
            self.handle.connection_closed(self)
            if self._task is not None and not self._task.done():
                self._task.cancel()
            if not t.is_closing():
                t.abort()

    # -- the listener's housekeeping ------------------------------------------------------

    def on_deadline(self, now: float) -> None:
        """Never armed: the handshake timeout is `start_tls`'s own."""

    def start_drain(self) -> None:
        self.abort()  # no request has begun: nothing to finish

    def admission_facts(self) -> tuple[str, tuple[str, int] | None] | None:
        t = self._transport
        if t is None:
            return None
        return peer_address(t), None

    def not_admitted(self, reason: str) -> None:
        """Still in its handshake when a swap changed the listener's admission (ADR 0127):
        refused as at accept, counted `tulle_proxy_protocol_errors_total{kind=reason}`."""
        self.handle.ctx.protocol_error(reason)
        self.abort()

    def abort(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        elif self._transport is not None:
            self._release(self._transport)
