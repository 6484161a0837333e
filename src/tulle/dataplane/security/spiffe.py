"""The SPIFFE ID of a TLS peer, and the client-side check that it is one we expect.

Why a module of its own: the accept side (what `ConnectionFacts.peer_identity` holds for
authorization, metrics and logs) and the dialler (is the server the service we meant to reach?)
must read a certificate the same way.  The rules (SPIFFE X509-SVID, ADR 0030 and 0097):
- an identity is the certificate's only URI SAN, and it must be a SPIFFE ID with a path
  (`tulle.proxyconfig.spiffe_id.is_svid_id`, the rule the control plane's CA shares): a
  certificate with no URI SAN, several, one of another scheme, or a `spiffe://` URI that is no
  valid SPIFFE ID (`%61pi`, `x/../api`, a trailing slash, an uppercase trust domain, a port,
  userinfo, a query) has no identity;
- only a certificate the TLS layer *verified* counts: `getpeercert()` returns an empty dict
  otherwise, so an unverified peer is anonymous.
A peer that fails any of these is anonymous: identity rules never match it, no
x-forwarded-client-cert names it, and `expect` refuses it as a server.

Reading is once per connection (about 10 us: the stdlib decodes the certificate to a dict),
never per request.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Collection
from typing import Final

from tulle.dataplane.telemetry.metrics import CounterChild
from tulle.proxyconfig.spiffe_id import is_svid_id

TCP_ALPN: Final = "tulle-tcp"
"""The ALPN token of an opaque TCP stream carried over mesh mTLS: the server side relays it
to the chain's cluster without sniffing (h2 and http/1.1 pick the HTTP drivers)."""

PeerCheck = Callable[[ssl.SSLObject | ssl.SSLSocket | None], str | None]
"""Given the TLS object of a fresh upstream connection: None when the peer is acceptable,
else the short reason (the dial fails with it)."""


def spiffe_id(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str:
    """The verified peer's SPIFFE ID; "" when it has none (or was not verified)."""
    if ssl_object is None:
        return ""
    try:
        cert = ssl_object.getpeercert()
    except (ValueError, ssl.SSLError):  # handshake not done, or gone
        return ""
    if not cert:
        return ""
    uri = ""
    for san in cert.get("subjectAltName", ()):
        kind, value = san[0], san[1]
        if kind == "URI":
            if uri:
                return ""  # several URI SANs: not an SVID
            uri = str(value)
    return uri if is_svid_id(uri) else ""


def expect(ids: Collection[str], rejected: CounterChild) -> PeerCheck:
    """A check that the server's SPIFFE ID is one of `ids`; a mismatch bumps `rejected`."""
    allowed = frozenset(ids)

    def check(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
        got = spiffe_id(ssl_object)
        if got in allowed:
            return None
        rejected.value += 1
        return (f"TLS: server identity {got or '(none)'} is not one expected for the "
                f"destination")

    return check
