"""Server-side TLS for listeners: a context from files, with ALPN, and the driver choice by ALPN.

The context object stays the same for the listener's life; certificate rotation (zero-trust
issue) calls `load_cert_chain` on it again, which affects new handshakes only.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from tulle.proxyconfig.model import TLSContext


def server_ssl_context(tls: TLSContext) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.ca_file:
        ctx.load_verify_locations(tls.ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(list(tls.alpn) or ["h2", "http/1.1"])
    return ctx


class ALPNSelector(asyncio.Protocol):
    """Stands in for the driver until the TLS handshake is done, then hands over.

    asyncio calls `connection_made` only after the handshake, so the negotiated ALPN protocol is
    known here; `choose` builds the driver for it (None when the client offered no ALPN) and
    takes this object's place on the transport before any request byte is read.
    """

    def __init__(self, choose: Callable[[str | None], asyncio.Protocol]) -> None:
        self._choose = choose

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        driver = self._choose(alpn)
        transport.set_protocol(driver)
        driver.connection_made(transport)
