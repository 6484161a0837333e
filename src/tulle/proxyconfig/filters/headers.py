"""Header modifier configs: Gateway API `RequestHeaderModifier` / `ResponseHeaderModifier`.

One module per filter config (DESIGN.md section 4): the struct the contract carries in
`RouteRule.filters`, documented field by field, and the checks a type cannot express.  The
runtime side is `tulle/dataplane/filters/headers.py`.

Semantics are Gateway API's `HTTPHeaderFilter`: `set` replaces every value of a header (or adds
it), `add` appends a value, `remove` drops every value of a header; names match case-insensitively.
Each list holds at most 16 entries, and a name appears at most once across the three lists.

Refused, with the field path: a name that is not an RFC 9110 token, a value containing CR, LF,
NUL or another control character, or with leading or trailing whitespace (it would inject a
header, be cut short, or be refused by an HTTP/2 peer), and names the proxy itself owns — the framing and
hop-by-hop fields (`content-length`, `transfer-encoding`, `host`, `connection`, `te`, `upgrade`,
`keep-alive`, `proxy-connection`) and pseudo-headers (`:path` ...).  Editing those would let a
config change how a message is framed or where it is routed after routing decided.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta, Struct

from tulle.errors import FieldError

MAX_ENTRIES = 16
"""Per list (`set`, `add`, `remove`), as the Gateway API's `maxItems`."""

HeaderName = Annotated[str, Meta(min_length=1, max_length=256,
                                 pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
"""An RFC 9110 token: a pseudo-header (`:path`) or anything with a space or colon fails here."""
HeaderValue = Annotated[str, Meta(
    max_length=4096,
    pattern=r"^(?:[^\x00-\x20\x7f](?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?)?$")]
"""An RFC 9110 field value: no CR, LF, NUL or other control character (tab only inside), no
leading or trailing whitespace.  A value from config can never start a new header line, and
HTTP/2 peers (which refuse surrounding whitespace) take every value HTTP/1 peers take."""

OWNED = frozenset({"content-length", "transfer-encoding", "host", "connection", "te", "upgrade",
                   "keep-alive", "proxy-connection"})
"""Names the proxy frames and routes by; no filter may set, add or remove them."""


class HTTPHeader(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: HeaderName
    value: HeaderValue


class HeaderModifier(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True,
                tag_field="type"):
    set: Annotated[list[HTTPHeader], Meta(max_length=MAX_ENTRIES)] = msgspec.field(
        default_factory=list)
    """Headers to set: every existing value of the name is replaced by this one."""
    add: Annotated[list[HTTPHeader], Meta(max_length=MAX_ENTRIES)] = msgspec.field(
        default_factory=list)
    """Headers to append: existing values of the name are kept."""
    remove: Annotated[list[HeaderName], Meta(max_length=MAX_ENTRIES)] = msgspec.field(
        default_factory=list)
    """Header names whose every value is dropped."""


class RequestHeaderModifier(HeaderModifier, frozen=True, kw_only=True,
                            tag="RequestHeaderModifier"):
    """Edits the request head before it goes upstream (after routing)."""


class ResponseHeaderModifier(HeaderModifier, frozen=True, kw_only=True,
                             tag="ResponseHeaderModifier"):
    """Edits the response head before it goes to the client."""


def errors(f: RequestHeaderModifier | ResponseHeaderModifier, path: str) -> list[FieldError]:
    """What types cannot say: owned names, and a name listed twice."""
    out: list[FieldError] = []
    seen: dict[str, str] = {}
    entries = [(f"{path}.set[{i}].name", h.name) for i, h in enumerate(f.set)]
    entries += [(f"{path}.add[{i}].name", h.name) for i, h in enumerate(f.add)]
    entries += [(f"{path}.remove[{i}]", n) for i, n in enumerate(f.remove)]
    for where, name in entries:
        low = name.lower()
        if low in OWNED:
            out.append(FieldError(where, f"{name!r} is framed or routed by the proxy and may "
                                         "not be modified"))
        elif low in seen:
            out.append(FieldError(where, f"{name!r} already appears at {seen[low]}"))
        else:
            seen[low] = where
    return out
