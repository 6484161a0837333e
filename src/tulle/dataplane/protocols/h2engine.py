"""Which HTTP/2 engine the drivers use: libnghttp2 (`nghttp2.py`, the default) or h2.

Why a switch at all: the pure-Python h2 codec (`http2.py`) stays as a fallback for a machine
where the C half cannot be built, and as the reference the engine was checked against
(ADR 0051).  It is chosen once per process, before any connection, by the environment:

    TULLE_H2_ENGINE=nghttp2   (default)   libnghttp2 through the cffi module of ng2/
    TULLE_H2_ENGINE=h2                     the pure-Python h2 stack

Both engines expose the same class interface; `H2Codec` is typed as the default engine's.
The drivers type the codec they hold as `Codec`, the union of both engines' classes: the
drivers are compiled with mypyc (ADR 0061), which checks a declared class at run time, and the
h2 engine's codec is not an `NgCodec`.  Through the union, mypyc calls an `NgCodec` natively
(one type test, then a C call) and the h2 engine's codec as any Python object; through a
`typing.Protocol` every call was a method lookup by name and an argument parse (ADR 0074).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from tulle.dataplane.protocols.h2common import H2Limits
    from tulle.dataplane.protocols.http2 import H2Codec as H2PyCodec
    from tulle.dataplane.protocols.nghttp2 import NgCodec

ENGINE = os.environ.get("TULLE_H2_ENGINE", "nghttp2")
"""The engine in use: "nghttp2" or "h2"."""

if TYPE_CHECKING:
    from tulle.dataplane.protocols.nghttp2 import NgCodec as H2Codec
elif ENGINE == "h2":
    from tulle.dataplane.protocols.http2 import H2Codec
elif ENGINE == "nghttp2":
    try:
        from tulle.dataplane.protocols.nghttp2 import NgCodec as H2Codec
    except ImportError as exc:  # the C half was not built: say how, never fall back silently
        raise ImportError(
            "the libnghttp2 HTTP/2 engine is not built: run `make deps` (or `python -m "
            "tulle.dataplane.protocols.ng2.build` with libnghttp2-dev installed), or set "
            "TULLE_H2_ENGINE=h2 for the pure-Python engine") from exc
else:
    raise ValueError(f"TULLE_H2_ENGINE={ENGINE!r}: expected 'nghttp2' or 'h2'")



Codec: TypeAlias = "NgCodec | H2PyCodec"
"""What the drivers hold: the codec of either engine (`nghttp2.NgCodec`, `http2.H2Codec`)."""


def new_codec(*, client_side: bool, limits: H2Limits, now: float = 0.0) -> Codec:
    """A codec of the engine in use.  The compiled drivers make theirs here, never by calling
    `H2Codec` themselves: mypyc, seeing the default engine's class behind the name, would call
    that class's constructor directly whichever engine runs."""
    return H2Codec(client_side=client_side, limits=limits, now=now)


__all__ = ["ENGINE", "Codec", "H2Codec", "new_codec"]
