"""Redirect config: Gateway API `RequestRedirect` (`HTTPRequestRedirectFilter`).

The proxy answers the request itself with a redirect; nothing reaches an upstream.  `Location`
is the request's URL with the fields set here replaced (the query string is kept):

* `scheme` unset: the request's scheme when it is `http` or `https`, else `http` (an HTTP/2
  client chooses `:scheme`);  `hostname` unset: the request's host (without port), and a
  request naming none (HTTP/1.0 without `Host`) is answered 400 (ADR 0101);
* `port` unset: when `scheme` is set, that scheme's well-known port (80 / 443); otherwise the
  port the client named in its authority, else the request scheme's well-known port (in a mesh
  the "listener port" of Gateway API is the Service port the client called, which is the port
  in its authority when it is not the scheme's default; one outside 1-65535 is none);
* the port is left out of `Location` when it is the scheme's well-known one (http 80, https
  443), as Gateway API asks;
* `path`: see `paths.PathModifier`; unset: the request's path.

The runtime side is `tulle/dataplane/filters/redirect.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from msgspec import Meta, Struct

from tulle.errors import FieldError
from tulle.proxyconfig.filters.paths import Hostname, PathModifier, prefix_errors


class RequestRedirect(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True,
                      tag_field="type", tag="RequestRedirect"):
    """Answer the request with a redirect (no upstream)."""

    scheme: Literal["http", "https"] | None = None
    """The scheme of `Location`; null: the request's."""
    hostname: Hostname | None = None
    """The host of `Location`; null: the request's (without its port)."""
    port: Annotated[int, Meta(ge=1, le=65535)] | None = None
    """The port of `Location`; null: derived as the module docstring says."""
    path: PathModifier | None = None
    """How the path changes; null: the request's path."""
    status_code: Literal[301, 302, 303, 307, 308] = 302
    """The redirect's status."""


def errors(f: RequestRedirect, path: str, match_types: Sequence[str] | None) -> list[FieldError]:
    return prefix_errors(f.path, match_types or [], path)
