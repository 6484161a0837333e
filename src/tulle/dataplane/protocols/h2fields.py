"""What an HTTP/2 request may carry into an HTTP/1.1 request line and header block.

Why: HTTP/2 frames fields by length, HTTP/1.1 by delimiters.  A `:method` with a space, a
`:path` in absolute form, a `:authority` with userinfo or a header name with `(` are all
harmless in an h2 frame and become a different request once written as text (RFC 9113 8.2.1,
8.3.1).  h2 itself rejects CR, LF, NUL, surrounding whitespace, upper-case names and
connection-specific fields (as connection errors); these checks add what it lets through, so that
whatever the codec accepts serialises to exactly one HTTP/1.1 request with the same method,
target and fields.  A request failing them is malformed: a stream error (RFC 9113 8.1.1).

Cost: every check is a `bytes.translate` deleting the allowed bytes (the result is empty when
all are allowed) or one precompiled regex; and a connection remembers (`FieldMemo`) the fields
and the authority it already accepted, which on a gRPC connection is nearly all of them (HPACK
hands out the same field objects again, their hashes already computed).
"""

from __future__ import annotations

import re
from typing import Final

_DIGITS = b"0123456789"
_LOWER = b"abcdefghijklmnopqrstuvwxyz"
_UPPER = _LOWER.upper()
_TCHAR_SYMBOLS = b"!#$%&'*+-.^_`|~"
NAME_CHARS: Final = _TCHAR_SYMBOLS + _DIGITS + _LOWER
"""A field name: an RFC 9110 token, lower case (RFC 9113 8.2.1)."""
TOKEN_CHARS: Final = NAME_CHARS + _UPPER
"""A method: an RFC 9110 token (case-sensitive)."""
VALUE_CHARS: Final = bytes([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
"""field-value: VCHAR, SP, HTAB and obs-text; no other control character and no DEL."""
TARGET_CHARS: Final = bytes(range(0x21, 0x7F))
"""An origin-form target: visible ASCII (RFC 9112 3.2; raw non-ASCII must be percent-encoded)."""

_AUTHORITY: Final = re.compile(
    rb"(?:(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?")
"""host [ ":" port ]: a reg-name or IPv4 (RFC 3986 3.2.2, non-empty as RFC 9110 4.2.1 requires
for http), or a bracketed IPv6 literal; no userinfo."""


def name_ok(name: bytes) -> bool:
    return bool(name) and not name.translate(None, NAME_CHARS)


def value_ok(value: bytes) -> bool:
    if not value:
        return True
    return (not value.translate(None, VALUE_CHARS)
            and value[0] not in (0x20, 0x09) and value[-1] not in (0x20, 0x09))


def method_ok(method: bytes) -> bool:
    return bool(method) and not method.translate(None, TOKEN_CHARS)


def path_ok(path: bytes, method: bytes) -> bool:
    """Origin-form, or `*` for OPTIONS; never absolute-form or authority-form."""
    if path[:1] == b"/":
        return not path.translate(None, TARGET_CHARS)
    return path == b"*" and method == b"OPTIONS"


def authority_ok(authority: bytes) -> bool:
    return _AUTHORITY.fullmatch(authority) is not None


def content_length(value: bytes) -> int | None:
    """The value as a number, or None unless it is 1..19 ASCII digits (no sign, space or `_`,
    which `int()` would accept)."""
    if 0 < len(value) < 20 and value.isdigit():
        return int(value)
    return None


KNOWN_METHODS = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH",
                           b"TRACE"})


class FieldMemo:
    """What one connection already accepted: at most `MAX` fields, and its last authority.

    Bounded and per connection, so a peer sending ever new fields only stops being remembered
    (and pays the full check), it cannot grow memory or slow other connections."""

    MAX: Final = 128
    __slots__ = ("authority", "fields")

    def __init__(self) -> None:
        self.fields: set[tuple[bytes, bytes]] = set()
        self.authority = b""
