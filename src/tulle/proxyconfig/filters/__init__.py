"""Filter configs of the contract: one tagged struct per filter, one module per config.

`HTTPFilter` is the tagged union a route rule's `filters` list holds (the `type` field names
the member, as in Gateway API's `HTTPRouteFilter`).  Adding a filter: a module here with its
struct(s) and an `errors(cfg, path)` for the checks types cannot express, a member in
`HTTPFilter`, a branch in `errors` below, a contract feature (`proxyconfig/features.py`), and
the runtime side in `dataplane/filters/`.
"""

from __future__ import annotations

from tulle.errors import FieldError
from tulle.proxyconfig.filters import authz, headers
from tulle.proxyconfig.filters.authz import Authorization
from tulle.proxyconfig.filters.headers import RequestHeaderModifier, ResponseHeaderModifier

HTTPFilter = RequestHeaderModifier | ResponseHeaderModifier | Authorization
"""Every HTTP filter config this contract has, tagged by `type`."""


def errors(f: HTTPFilter, path: str) -> list[FieldError]:
    """The semantic errors of one filter config, each with its path below `path`."""
    if isinstance(f, RequestHeaderModifier | ResponseHeaderModifier):
        return headers.errors(f, path)
    if isinstance(f, Authorization):
        return authz.errors(f, path)
    return []  # pragma: no cover - every member has a branch above


__all__ = ["Authorization", "HTTPFilter", "RequestHeaderModifier", "ResponseHeaderModifier", "errors"]
