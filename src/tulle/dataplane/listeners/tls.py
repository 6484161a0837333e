"""Server-side TLS for listeners: a context from files, with ALPN.

The context object stays the same for the listener's life; certificate rotation (zero-trust
issue) calls `load_cert_chain` on it again, which affects new handshakes only.
"""

from __future__ import annotations

import ssl

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
