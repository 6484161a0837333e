"""Filter configs of the contract: one tagged struct per filter, one module per config.

`HTTPFilter` is the tagged union a route rule's `filters` list holds (the `type` field names
the member, as in Gateway API's `HTTPRouteFilter`).  Adding a filter: a module here with its
struct(s) and an `errors(cfg, path)` for the checks types cannot express, a member in
`HTTPFilter`, a branch in `errors` below, a contract feature (`proxyconfig/features.py`), and
the runtime side in `dataplane/filters/`.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import Any

from tulle.errors import FieldError
from tulle.proxyconfig.filters import (
    authz,
    fault,
    headers,
    mirror,
    ratelimit,
    redirect,
    rewrite,
    session,
)
from tulle.proxyconfig.filters.authz import Authorization
from tulle.proxyconfig.filters.fault import FaultInjection
from tulle.proxyconfig.filters.headers import RequestHeaderModifier, ResponseHeaderModifier
from tulle.proxyconfig.filters.mirror import RequestMirror
from tulle.proxyconfig.filters.ratelimit import RateLimit
from tulle.proxyconfig.filters.redirect import RequestRedirect
from tulle.proxyconfig.filters.rewrite import URLRewrite
from tulle.proxyconfig.filters.session import SessionPersistence

HTTPFilter = (RequestHeaderModifier | ResponseHeaderModifier | RequestRedirect | URLRewrite
              | RequestMirror | Authorization | FaultInjection | RateLimit
              | SessionPersistence)
"""Every HTTP filter config this contract has, tagged by `type`."""


def errors(f: HTTPFilter, path: str, match_types: Sequence[str] | None = None) -> list[FieldError]:
    """The semantic errors of one filter config, each with its path below `path`.
    `match_types`: the path match types of the filter's rule (`ReplacePrefixMatch` needs
    them all `PathPrefix`); None: not checked against a rule."""
    if isinstance(f, RequestHeaderModifier | ResponseHeaderModifier):
        return headers.errors(f, path)
    if isinstance(f, Authorization):
        return authz.errors(f, path)
    if isinstance(f, RequestRedirect):
        return redirect.errors(f, path, match_types)
    if isinstance(f, URLRewrite):
        return rewrite.errors(f, path, match_types)
    if isinstance(f, RequestMirror):
        return mirror.errors(f, path)
    if isinstance(f, FaultInjection):
        return fault.errors(f, path)
    if isinstance(f, RateLimit):
        return ratelimit.errors(f, path)
    if isinstance(f, SessionPersistence):
        return session.errors(f, path)
    return []  # pragma: no cover - every member has a branch above


def rule_errors(rule: Any, rp: str, clusters: Container[str]) -> list[FieldError]:
    """The filters of a route rule at path `rp` (a `model.RouteRule`: its own, checked against
    its matches, and its backends'); a mirror must name a cluster of `clusters`."""
    out = backend_errors(rule.backends, rp)
    types = [match.path.type for match in rule.matches]
    sessions = 0
    for m, f in enumerate(rule.filters):
        out += errors(f, f"{rp}.filters[{m}]", types)
        if isinstance(f, SessionPersistence):
            sessions += 1
            if sessions > 1:
                out.append(FieldError(f"{rp}.filters[{m}].type",
                                      "a rule has at most one SessionPersistence"))
        if isinstance(f, RequestMirror) and f.cluster not in clusters:
            out.append(FieldError(f"{rp}.filters[{m}].cluster",
                                  f"no cluster named {f.cluster!r}"))
    return out


def backend_errors(backends: Sequence[Any], rp: str) -> list[FieldError]:
    """A rule's `backends[].filters` (rule path `rp`): header modifiers only, and a backend
    with filters must be the only one of its cluster (the proxy picks a cluster, then that
    cluster's filters)."""
    out: list[FieldError] = []
    if not any(b.filters for b in backends):
        return out
    seen: set[str] = set()
    for m, b in enumerate(backends):
        bp = f"{rp}.backends[{m}]"
        if b.cluster in seen:
            out.append(FieldError(f"{bp}.cluster", f"{b.cluster!r} appears twice among "
                                  "backends, and a backend of this rule has filters"))
        seen.add(b.cluster)
        for k, f in enumerate(b.filters):
            if not isinstance(f, RequestHeaderModifier | ResponseHeaderModifier):
                out.append(FieldError(f"{bp}.filters[{k}].type", "only RequestHeaderModifier "
                                      "and ResponseHeaderModifier are taken on a backend"))
            else:
                out += headers.errors(f, f"{bp}.filters[{k}]")
    return out


__all__ = ["Authorization", "FaultInjection", "HTTPFilter", "RateLimit", "RequestHeaderModifier",
           "RequestMirror", "RequestRedirect", "ResponseHeaderModifier", "SessionPersistence",
           "URLRewrite",
           "backend_errors", "errors", "rule_errors"]
