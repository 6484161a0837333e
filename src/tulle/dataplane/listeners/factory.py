"""Which protocol object serves a freshly accepted connection on a listener.

One table from a listener's `protocol` (and `mode`) to a downstream driver.  Detection, TCP relay
and HTTP/2 plug in here; the server knows nothing about protocols.

The HTTP/2 driver (and with it h2, hpack and hyperframe, about 1.2 MB of resident memory) is
imported only when a connection needs it: at start for an h2c listener, at the first ALPN `h2`
on a TLS listener, at the first h2 preface on a sniffing one (`DetectDownstream`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tulle.dataplane.listeners.context import Refused
from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.listeners.http1 import H1Downstream
from tulle.dataplane.runtime.tls import ServerRef

ProtocolFactory = Callable[[], asyncio.Protocol]


def protocol_factory(handle: ListenerHandle,
                     tls: ServerRef | None = None) -> ProtocolFactory:
    """The factory `loop.create_server` calls for each accepted connection.

    A listener at one of its caps (or a proxy that stopped accepting) gets a `Refused` stand-in
    instead of a driver: no codec or driver is built for a connection that is reset at once.
    The driver's `connection_opened` still decides exactly: the counts this check reads can
    lag (a loop may run several accepts before the first `connection_made`).

    On a TLS listener (`tls` given; the server itself is plain) the protocol is a
    `TLSAccept`, admitted at accept like any connection: it runs the handshake and hands its
    slot to the driver chosen by ALPN (see `tulle.dataplane.listeners.tls`)."""
    make = _driver_factory(handle, tls)
    full = handle.full

    def factory() -> asyncio.Protocol:
        return Refused(handle) if full() else make()

    return factory


def _driver_factory(handle: ListenerHandle, tls: ServerRef | None) -> ProtocolFactory:
    cfg = handle.ctx.cfg
    if cfg.filter_chains:  # chosen per connection (transport, SNI, ALPN, destination)
        from tulle.dataplane.listeners.chain_accept import ChainAccept

        return lambda: ChainAccept(handle)
    if cfg.protocol == "http1" and cfg.mode == "explicit" and cfg.tls is None:
        return lambda: H1Downstream(handle)
    if cfg.protocol == "http2" and cfg.mode == "explicit" and cfg.tls is None:
        from tulle.dataplane.listeners.http2 import H2Downstream

        return lambda: H2Downstream(handle)  # h2c, prior knowledge
    if (cfg.protocol in ("http1", "http2") and cfg.mode == "explicit" and cfg.tls is not None
            and tls is not None):
        from tulle.dataplane.listeners.tls import TLSAccept

        ref = tls

        def by_alpn(alpn: str | None) -> asyncio.Protocol:
            if alpn == "h2":
                from tulle.dataplane.listeners.http2 import H2Downstream

                return H2Downstream(handle)
            return H1Downstream(handle)

        # The entry's context is read at each accept: a replaced one (new trust anchors,
        # `runtime.tls`) serves the next handshake without a new server.
        return lambda: TLSAccept(handle, ref.ctx, by_alpn)
    if cfg.tls is None and (cfg.mode == "transparent" or cfg.protocol in ("auto", "tcp")):
        from tulle.dataplane.listeners.detect import (  # its relay, its parsers
            DetectDownstream,
            SilenceWatch,
        )

        watch = SilenceWatch()  # one detection timer per listener, not per connection
        if cfg.protocol == "auto" and cfg.mode == "explicit":
            from tulle.dataplane.listeners.h1sniff import H1SniffDownstream

            # HTTP/1 first: no hand-over when the first bytes say HTTP/1 (ADR 0073).
            return lambda: H1SniffDownstream(handle, watch)
        return lambda: DetectDownstream(handle, watch)  # sniffing, TCP relay, original destination
    raise NotImplementedError(
        f"listener {cfg.name}: protocol {cfg.protocol!r} in {cfg.mode} mode is not available")
