"""One module per L7 filter: its factory and per-request filter (DESIGN.md section 4).

`factory_for` maps a filter config of the contract (`proxyconfig/filters/`) to the factory that
runs it; `dataplane/http/chain.py` places the factories in the declared order.  Filters that
change the path by the matched prefix (`RequestRedirect`, `URLRewrite`) are given the rule's
matches, from which they tell which prefix a request matched (`filters/paths.py`).  Each
filter's module is imported when a route first uses it: a proxy pays in memory only for the
filters its config names (ADR 0068).
"""

from __future__ import annotations

from collections.abc import Sequence

from tulle.dataplane.filters.headers import HeadersFactory
from tulle.dataplane.http.filter import FilterFactory
from tulle.proxyconfig.filters import (
    Authorization,
    FaultInjection,
    HTTPFilter,
    RateLimit,
    RequestHeaderModifier,
    RequestMirror,
    RequestRedirect,
    ResponseHeaderModifier,
    SessionPersistence,
    URLRewrite,
)
from tulle.proxyconfig.model import RouteMatch


def factory_for(cfg: HTTPFilter, matches: Sequence[RouteMatch] = (),
                clusters: Sequence[str] = ()) -> FilterFactory:
    """The factory for one filter config of a rule with `matches` and backend `clusters`,
    built once per route per snapshot."""
    if isinstance(cfg, RequestHeaderModifier):
        return HeadersFactory(cfg, response=False)
    if isinstance(cfg, ResponseHeaderModifier):
        return HeadersFactory(cfg, response=True)
    if isinstance(cfg, Authorization):
        from tulle.dataplane.filters.authz import AuthzFactory

        return AuthzFactory(cfg)
    if isinstance(cfg, RequestRedirect):
        from tulle.dataplane.filters.redirect import RedirectFactory

        return RedirectFactory(cfg, list(matches))
    if isinstance(cfg, URLRewrite):
        from tulle.dataplane.filters.rewrite import RewriteFactory

        return RewriteFactory(cfg, list(matches))
    if isinstance(cfg, RequestMirror):
        from tulle.dataplane.filters.mirror import MirrorFactory

        return MirrorFactory(cfg)
    if isinstance(cfg, FaultInjection):
        from tulle.dataplane.filters.fault import FaultFactory

        return FaultFactory(cfg)
    if isinstance(cfg, RateLimit):
        from tulle.dataplane.filters.ratelimit import RateLimitFactory

        return RateLimitFactory(cfg)
    if isinstance(cfg, SessionPersistence):
        from tulle.dataplane.filters.session import SessionFactory  # only where one is used

        return SessionFactory(cfg, clusters)
    raise TypeError(f"no filter for {type(cfg).__name__}")  # pragma: no cover
