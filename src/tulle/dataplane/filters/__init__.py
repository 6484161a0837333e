"""One module per L7 filter: its factory and per-request filter (DESIGN.md section 4).

`factory_for` maps a filter config of the contract (`proxyconfig/filters/`) to the factory that
runs it; `dataplane/http/chain.py` places the factories in the declared order.
"""

from __future__ import annotations

from tulle.dataplane.filters.authz import AuthzFactory
from tulle.dataplane.filters.headers import HeadersFactory
from tulle.dataplane.http.filter import FilterFactory
from tulle.proxyconfig.filters import (
    Authorization,
    HTTPFilter,
    RequestHeaderModifier,
    ResponseHeaderModifier,
)


def factory_for(cfg: HTTPFilter) -> FilterFactory:
    """The factory for one filter config, built once per route per snapshot."""
    if isinstance(cfg, RequestHeaderModifier):
        return HeadersFactory(cfg, response=False)
    if isinstance(cfg, ResponseHeaderModifier):
        return HeadersFactory(cfg, response=True)
    if isinstance(cfg, Authorization):
        return AuthzFactory(cfg)
    raise TypeError(f"no filter for {type(cfg).__name__}")  # pragma: no cover
