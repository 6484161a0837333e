"""Session tokens: what a session-persistence cookie or header carries (ADR 0058).

Why a module of its own: the token is bytes a client hands back to the proxy, so it is a parser
of untrusted input, kept small and pure to be unit-tested and fuzzed on its own.

Layout, before base64url without padding (always `TOKEN_CHARS` characters):

    version (1 byte, 1) | endpoint id (8 bytes) | idle expiry (u32) | absolute expiry (u32)

* The endpoint id is a 64-bit BLAKE2b hash of the cluster's name and the endpoint's
  `address:port` (`endpoint_id`): a token does not show the endpoint's address, and a token
  issued for one cluster names nothing in another.  It is not a secret and not a signature:
  whoever can reach the proxy may forge a token, and all a forged token can do is choose one
  of the rule's current, healthy endpoints, which the balancer could have picked anyway
  (Envoy's stateful session cookie is the endpoint's address in base64, with no more
  protection).
* Expiries are whole seconds since the Unix epoch (a token outlives the process that issued
  it, and may be presented to another replica); 0 means none.  A token is expired when either
  expiry is at or before now.

Everything else — a wrong length, a character outside the base64url alphabet, a last
character with its unused bits set (a second spelling of a token), another version, a token
past its expiry — decodes to None, and the request is balanced as usual.
"""

from __future__ import annotations

import base64
import binascii
import struct

VERSION = 1
_LAYOUT = struct.Struct(">B8sII")
TOKEN_CHARS = 23
"""`_LAYOUT.size` (17 bytes) in base64url without padding."""
_B64URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_ALPHABET = frozenset(_B64URL)
_LAST = frozenset(_B64URL[::4])
_TO_STD = bytes.maketrans(b"-_", b"+/")
"""The last character carries 4 bits of the token and 2 unused ones, which must be 0: one
spelling per token."""
MAX_EXPIRY = 0xFFFFFFFF


def endpoint_id(cluster: str, endpoint_key: str) -> bytes:
    """The 8-byte id of endpoint `address:port` of `cluster` inside a token."""
    import hashlib  # (here: a proxy without sessions never loads it; test_footprint.py)

    data = cluster.encode() + b"\0" + endpoint_key.encode()
    return hashlib.blake2b(data, digest_size=8, person=b"tulle-session").digest()


def encode(ep_id: bytes, idle_expiry: int, absolute_expiry: int) -> bytes:
    """A token naming `ep_id`; expiries in whole epoch seconds (0: none), clamped to u32."""
    raw = _LAYOUT.pack(VERSION, ep_id, min(max(idle_expiry, 0), MAX_EXPIRY),
                       min(max(absolute_expiry, 0), MAX_EXPIRY))
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


class Token:
    """A decoded token (`decode`: and unexpired)."""

    __slots__ = ("absolute_expiry", "endpoint", "idle_expiry")

    def __init__(self, endpoint: bytes, idle_expiry: int, absolute_expiry: int) -> None:
        self.endpoint = endpoint
        """The endpoint id (`endpoint_id`)."""
        self.idle_expiry = idle_expiry
        self.absolute_expiry = absolute_expiry
        """Carried into the tokens issued for the rest of the session (it never moves)."""

    def expired(self, now: float) -> bool:
        """Either expiry at or before `now` (epoch seconds); 0 is none."""
        idle, absolute = self.idle_expiry, self.absolute_expiry
        return bool((idle and idle <= now) or (absolute and absolute <= now))


def decode(value: bytes, now: float) -> Token | None:
    """The token in `value` if it is well formed and unexpired at `now` (epoch seconds);
    None otherwise.  Costs nothing beyond a length test for a value of the wrong size."""
    token = parse(value)
    if token is None or token.expired(now):
        return None
    return token


def parse(value: bytes) -> Token | None:
    """The token in `value` if it is well formed, expired or not; None otherwise."""
    value = value.strip(b" \t")
    if (len(value) != TOKEN_CHARS or value[-1] not in _LAST
            or not _ALPHABET.issuperset(value)):
        return None
    try:  # (binascii directly: base64's wrappers cost more than the rest of this function)
        raw = binascii.a2b_base64(value.translate(_TO_STD) + b"=")
    except binascii.Error:  # pragma: no cover - the alphabet and length were checked
        return None
    if len(raw) != _LAYOUT.size:  # pragma: no cover - 23 chars always give 17 bytes
        return None
    version, ep, idle, absolute = _LAYOUT.unpack(raw)
    if version != VERSION:
        return None
    return Token(ep, idle, absolute)


def cookie_value(header: bytes, name: bytes) -> bytes | None:
    """The value of the first cookie called `name` in one `Cookie` field value (RFC 6265:
    `a=1; b=2`), or None.  Names compare exactly; quotes around a value are dropped."""
    for part in header.split(b";"):
        k, sep, v = part.partition(b"=")
        if sep and k.strip(b" \t") == name:
            v = v.strip(b" \t")
            if len(v) >= 2 and v[:1] == b'"' and v[-1:] == b'"':
                v = v[1:-1]
            return v
    return None


__all__ = ["TOKEN_CHARS", "Token", "cookie_value", "decode", "encode", "endpoint_id", "parse"]
