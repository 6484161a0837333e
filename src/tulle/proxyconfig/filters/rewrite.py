"""Rewrite config: Gateway API `URLRewrite` (`HTTPURLRewriteFilter`).

After routing, the request's authority and/or path are replaced before it goes upstream (the
route decided already: a rewrite never re-routes).  `hostname` replaces the whole authority
(HTTP/1 `Host`, HTTP/2 `:authority`), port included, as Envoy's `host_rewrite_literal` does;
`path` is a `paths.PathModifier` (the query string is kept).  The runtime side is
`tulle/dataplane/filters/rewrite.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

from msgspec import Struct

from tulle.errors import FieldError
from tulle.proxyconfig.filters.paths import Hostname, PathModifier, prefix_errors


class URLRewrite(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True,
                 tag_field="type", tag="URLRewrite"):
    """Change the authority and/or path the upstream sees."""

    hostname: Hostname | None = None
    """The authority the upstream sees; null: unchanged."""
    path: PathModifier | None = None
    """How the path changes; null: unchanged."""


def errors(f: URLRewrite, path: str, match_types: Sequence[str] | None) -> list[FieldError]:
    out = prefix_errors(f.path, match_types or [], path)
    if f.hostname is None and f.path is None:
        out.append(FieldError(path, "sets neither hostname nor path"))
    return out
