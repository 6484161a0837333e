"""The SPIFFE ID of a TLS peer, and the client-side check that it is one we expect.

Why a module of its own: the accept side (what `ConnectionFacts.peer_identity` holds for
authorization, metrics and logs) and the dialler (is the server the service we meant to reach?)
must read a certificate the same way.  The rules (SPIFFE X509-SVID, ADR 0030 and 0097):
- an identity is the certificate's only URI SAN, and it must be a SPIFFE ID with a path
  (`tulle.proxyconfig.spiffe_id.is_svid_id`, the rule the control plane's CA shares): a
  certificate with no URI SAN, several, one of another scheme, or a `spiffe://` URI that is no
  valid SPIFFE ID (`%61pi`, `x/../api`, a trailing slash, an uppercase trust domain, a port,
  userinfo, a query) has no identity;
- the certificate must be an SVID *leaf* (X509-SVID section 5.2): not a CA (basic constraints
  CA:FALSE or absent), and a key usage, when present, with digitalSignature (RFC 8446 section
  4.4.2.2) and without keyCertSign or cRLSign.  OpenSSL's `ssl_client` / `ssl_server` purpose
  checks let both through;
- only a certificate the TLS layer *verified* counts: `getpeercert()` returns an empty dict
  otherwise, so an unverified peer is anonymous.
A peer that fails any of these is anonymous: identity rules never match it, no
x-forwarded-client-cert names it, and `expect` refuses it as a server.

Reading is once per connection, never per request: about 10 us, mostly the stdlib decoding the
certificate to a dict; the leaf's two extensions are read from its DER here (`_is_svid_leaf`)
rather than with `cryptography`, whose import costs a proxy about 10 MB.
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
    if not is_svid_id(uri):
        return ""
    try:
        der = ssl_object.getpeercert(binary_form=True)
    except (ValueError, ssl.SSLError):
        return ""
    return uri if der and _is_svid_leaf(der) else ""


_BASIC_CONSTRAINTS: Final = b"\x06\x03\x55\x1d\x13"  # OID 2.5.29.19, as DER
_KEY_USAGE: Final = b"\x06\x03\x55\x1d\x0f"  # OID 2.5.29.15
_DIGITAL_SIGNATURE: Final = 0x80  # bit 0 of the key usage BIT STRING's first byte
_CERT_OR_CRL_SIGN: Final = 0x06  # bits 5 (keyCertSign) and 6 (cRLSign)


def _tlv(der: bytes, at: int, end: int) -> tuple[int, int, int]:
    """The DER element at `der[at]` within `end`: (tag, content start, content end).
    ValueError (IndexError past the bytes) on a multi-byte tag, a length of more than two
    bytes (64 KiB; a leaf is a few hundred bytes) or an element that overruns `end`."""
    tag = der[at]
    n = der[at + 1]
    if n < 0x80:
        at += 2
    elif n == 0x81:
        n = der[at + 2]
        at += 3
    elif n == 0x82:
        n = der[at + 2] << 8 | der[at + 3]
        at += 4
    else:
        raise ValueError("length")
    if tag & 0x1F == 0x1F or at + n > end:
        raise ValueError("tag or overrun")
    return tag, at, at + n


def _is_svid_leaf(der: bytes) -> bool:
    """The certificate (DER) may be an X509-SVID leaf: basic constraints not CA:TRUE; a key
    usage, if any, with digitalSignature and without keyCertSign or cRLSign.

    OpenSSL verified and so parsed it already; still, anything unexpected (a duplicate
    extension, a truncated element) makes it no leaf: fail closed."""
    try:
        _, at, end = _tlv(der, 0, len(der))  # Certificate
        _, at, end = _tlv(der, at, end)  # TBSCertificate
        while at < end:  # version, serial, ..., subjectPublicKeyInfo, [1], [2], [3]
            tag, start, stop = _tlv(der, at, end)
            if tag == 0xA3:  # [3] EXPLICIT Extensions
                break
            at = stop
        else:
            return True  # no extensions: nothing says CA or restricts the key (v1/v2)
        _, at, end = _tlv(der, start, stop)  # SEQUENCE OF Extension
        seen: set[bytes] = set()
        while at < end:
            _, ext, ext_end = _tlv(der, at, end)  # Extension
            at = ext_end
            name = der[ext:ext + 5]  # extnID, the Extension's first element, as DER
            if name not in (_BASIC_CONSTRAINTS, _KEY_USAGE):
                continue
            if name in seen:
                return False
            seen.add(name)
            tag, v, v_end = _tlv(der, ext + 5, ext_end)
            if tag == 0x01:  # critical BOOLEAN
                tag, v, v_end = _tlv(der, v_end, ext_end)
            if tag != 0x04:  # extnValue OCTET STRING
                return False
            tag, v, v_end = _tlv(der, v, v_end)
            if name == _BASIC_CONSTRAINTS:  # SEQUENCE { cA BOOLEAN DEFAULT FALSE, ... }
                if tag != 0x30:
                    return False
                if v < v_end:
                    tag, b, b_end = _tlv(der, v, v_end)
                    if tag == 0x01 and (b_end != b + 1 or der[b]):
                        return False  # CA:TRUE
            else:  # BIT STRING: unused-bit count, then bits 0.. from the high bit
                if tag != 0x03 or v_end - v < 2:
                    return False  # not a bit string, or no bit set: no digitalSignature
                bits = der[v + 1]
                if not bits & _DIGITAL_SIGNATURE or bits & _CERT_OR_CRL_SIGN:
                    return False
    except (ValueError, IndexError):
        return False
    return True


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
