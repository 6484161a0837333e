"""Server-side TLS for listeners: a context from files, with ALPN, and the driver choice by ALPN.

The context object stays the same for the listener's life; certificate rotation (zero-trust
issue) calls `load_cert_chain` on it again, which affects new handshakes only.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from tulle.dataplane.runtime.tls import build_server_context
from tulle.proxyconfig.model import TLSContext


def server_ssl_context(tls: TLSContext) -> ssl.SSLContext:
    """A fresh server context (the proxy shares them: `tulle.dataplane.runtime.tls`)."""
    return build_server_context(tls)


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
