"""URLRewrite at run time: the authority and/or path the upstream sees (Gateway API).

Runs after routing (the route is chosen already; a rewrite never re-routes) and before the
header modifiers (`http/chain.py` ORDER), so they see the final request.  The hostname replaces
the head's authority (HTTP/1 `Host`, HTTP/2 `:authority` upstream); the path is a `PathEdit`
(query kept).  Stateless: one instance serves every request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tulle.dataplane.filters.paths import PathEdit
from tulle.dataplane.http.filter import CONTINUE, FilterStream, HttpFilter

if TYPE_CHECKING:
    from tulle.proxyconfig.filters.rewrite import URLRewrite
    from tulle.proxyconfig.model import RouteMatch


class _Rewrite(HttpFilter):
    __slots__ = ("host", "path")

    def __init__(self, cfg: URLRewrite, matches: list[RouteMatch]) -> None:
        self.host = cfg.hostname.encode() if cfg.hostname is not None else None
        self.path = (PathEdit(cfg.path.type, cfg.path.value, matches)
                     if cfg.path is not None else None)

    def on_request_head(self, stream: FilterStream) -> int:
        head = stream.head
        if self.path is not None:
            head.path = self.path.apply(head.path, head)
        if self.host is not None:
            head.authority = self.host
        return CONTINUE


class RewriteFactory:
    """Built once per route per snapshot; the filter has no per-request state."""

    __slots__ = ("_filter",)

    name = "rewrite"
    stateless = True
    filter_type: type[HttpFilter] = _Rewrite

    def __init__(self, cfg: URLRewrite, matches: list[RouteMatch]) -> None:
        self._filter = _Rewrite(cfg, matches)

    def create(self) -> HttpFilter:
        return self._filter
