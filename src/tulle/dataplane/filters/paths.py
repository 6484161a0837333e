"""What `ReplacePrefixMatch` needs at run time: the prefix the route matched, and the new path.

The router hands a filter the route, not the match that chose it; a rule may have several
`PathPrefix` matches (each with conditions).  `MatchedPrefix` is built once per rule per snapshot
from the rule's matches, sorted as the router sorts them (longest prefix first, then the most
specific conditions, then declaration order, `routing/router.py`): the first of them that
holds for the request is the one the router chose, because the router's order restricted to
this rule's matches is the same order.  Only routes with a prefix-replacing filter pay for it,
once per request, in that filter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tulle.dataplane.routing.match import PathMatcher, conditions_of

if TYPE_CHECKING:
    from tulle.dataplane.exchange import RequestHead
    from tulle.proxyconfig.model import RouteMatch


class MatchedPrefix:
    """Which of a rule's `PathPrefix` matches a request took."""

    __slots__ = ("_matches",)

    def __init__(self, matches: list[RouteMatch]) -> None:
        ranked = []
        for order, m in enumerate(matches):
            p = PathMatcher(m.path)
            if p.prefix is None:
                continue  # refused by validation next to ReplacePrefixMatch; never matched here
            key = (-len(p.prefix), 0 if m.method is None else -1, -len(m.headers),
                   -len(m.query_params), order)
            ranked.append((key, p, conditions_of(m)))
        ranked.sort(key=lambda r: r[0])
        self._matches = tuple((p, c) for _, p, c in ranked)

    def prefix(self, path: bytes, head: RequestHead, query: bytes) -> bytes:
        """The matched prefix (normalised: no trailing `/` except `/` itself)."""
        for p, conditions in self._matches:
            if p.matches(path) and all(c.matches(head, query) for c in conditions):
                assert p.prefix is not None
                return p.prefix
        return b"/"  # (only when called for a request the rule did not match)


def replace_prefix(path: bytes, prefix: bytes, value: bytes) -> bytes:
    """Gateway API's segment-aware prefix replacement (the query is not part of `path`):
    `/foo` -> `/bar` maps `/foo` to `/bar` and `/foo/x` to `/bar/x`; -> `/` maps `/foo/x` to
    `/x`.  A trailing `/` of `value` stands for every slash that follows the prefix, as Envoy
    Gateway's `^/foo/*` rewrite does: `/foo//evil.com` -> `/` went upstream as `//evil.com`,
    a path no request could otherwise give the application through this rule, and one that
    code redirecting to its own path reads as scheme-relative (ADR 0101)."""
    rest = path[len(prefix):] if prefix != b"/" else path
    if rest[:1] == b"/" and value[-1:] == b"/":
        rest = rest.lstrip(b"/")
    return value + rest or b"/"


class PathEdit:
    """A compiled `PathModifier`: the request's new path (query kept)."""

    __slots__ = ("full", "matched", "value")

    def __init__(self, kind: str, value: str, matches: list[RouteMatch]) -> None:
        self.value = value.encode()
        self.full = kind == "ReplaceFullPath"
        self.matched = None if self.full else MatchedPrefix(matches)

    def apply(self, target: bytes, head: RequestHead) -> bytes:
        """`target`: the request's path with its query.  A target that is no path (`*` of
        `OPTIONS *`, which a `PathPrefix /` rule matches) is returned as it is: `/v2*` would
        be another request (ADR 0101)."""
        if target[:1] != b"/":
            return target
        path, sep, query = target.partition(b"?")
        matched = self.matched
        if matched is None:
            new = self.value
        else:
            new = replace_prefix(path, matched.prefix(path, head, query), self.value)
        return new + sep + query if sep else new
