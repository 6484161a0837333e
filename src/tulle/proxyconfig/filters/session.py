"""Session persistence config: the `SessionPersistence` HTTP filter (Gateway API
`sessionPersistence` on an HTTPRoute or GRPCRoute rule, GEP-1619; ADR 0058).

The first request of a session is balanced as usual; its response carries a token naming the
endpoint that answered (a cookie, or a response header), and later requests that bring the
token back go to that endpoint while it is one of the rule's backends' current, healthy
endpoints.  A token that is malformed, expired or names no such endpoint is ignored: the
request is balanced and gets a new token.

* `kind`: `Cookie` (`Set-Cookie` on the response, read from `Cookie`) or `Header` (the
  header `name` on the response, read from the same request header).
* `name`: the cookie's or header's name (the compiler's defaults: `tulle-session`,
  `x-tulle-session`).
* `path`: the cookie's `Path` attribute (the rule's path match, as the GEP asks).
* `permanent`: the cookie gets `Max-Age` = the absolute timeout (Gateway API
  `lifetimeType: Permanent`); otherwise it is a session cookie (no `Max-Age`).
* `absolute_timeout_ms`: a session ends this long after its first response (0: never).
* `idle_timeout_ms`: a session ends after this long without a request; each use refreshes
  the token's expiry (0: never).

The token's format and what is checked: `tulle/dataplane/filters/session_token.py`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

from tulle.errors import FieldError
from tulle.proxyconfig.filters.headers import HeaderName

SessionMillis = Annotated[int, Meta(ge=0, le=31_536_000_000)]
"""Up to a year (the token's expiries are whole seconds since the epoch)."""
CookiePath = Annotated[str, Meta(min_length=1, max_length=1024, pattern=r"^/[\x21-\x3a\x3c-\x7e]*$")]
"""An absolute path without `;`, spaces or controls: safe inside a `Set-Cookie` line."""


class SessionPersistence(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True,
                         tag_field="type", tag="SessionPersistence"):
    """Pin a client's requests to the endpoint that answered its first one."""

    name: HeaderName
    """Cookie or header name carrying the session token."""
    kind: Literal["Cookie", "Header"] = "Cookie"
    """Where the token travels."""
    path: CookiePath = "/"
    """The cookie's `Path` attribute (ignored for `Header`)."""
    permanent: bool = False
    """Give the cookie `Max-Age` = `absolute_timeout_ms` (which must then be set)."""
    absolute_timeout_ms: SessionMillis = 0
    """A session's whole life from its first response; 0: unlimited."""
    idle_timeout_ms: SessionMillis = 0
    """A session's life without a request; 0: unlimited."""


def errors(f: SessionPersistence, path: str) -> list[FieldError]:
    out: list[FieldError] = []
    if f.permanent and f.kind != "Cookie":
        out.append(FieldError(f"{path}.permanent", "only a Cookie session can be permanent"))
    if f.permanent and not f.absolute_timeout_ms:
        out.append(FieldError(f"{path}.absolute_timeout_ms",
                              "a permanent cookie needs an absolute timeout (its Max-Age)"))
    if f.permanent and f.absolute_timeout_ms and f.absolute_timeout_ms < 1000:
        out.append(FieldError(f"{path}.absolute_timeout_ms",
                              "a permanent cookie's Max-Age is whole seconds: at least 1000"))
    return out
