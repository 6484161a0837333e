"""Compiled HTTP routing: authority + request → the rule that applies, built once per snapshot.

Lookup order follows Gateway API precedence so routes written for other meshes behave the same:

1. Virtual host by authority: exact host, then the longest `*.suffix` wildcard, then the longest
   `prefix.*` wildcard, then `*`.  The port is dropped from the authority before matching unless
   a domain names one explicitly.
2. Within a host, candidate matches are sorted once: Exact paths before prefixes, longer
   prefixes before shorter ones, then declaration order.  Later match kinds (headers, query,
   method) extend `CompiledMatch.matches` and the sort key; the router's shape stays.

Path prefixes match whole segments (`/api` matches `/api`, `/api/` and `/api/x`, not `/apix`).
Per-request work: one or two dict lookups and a short scan of pre-sorted matches; none at all
when the table sends everything to one rule (`Router.only`: one `*` host, one catch-all rule).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence

from tulle.dataplane.filters import factory_for
from tulle.dataplane.http.chain import Chain, build_chain
from tulle.proxyconfig.model import RouteMatch, RouteRule, RouteTable


class Route:
    """A matched rule, ready to use: its backends (cluster names), timeout and filters."""

    __slots__ = ("_cum", "_total", "chain", "clusters", "name", "single", "timeout_ms")

    def __init__(self, name: str, rule: RouteRule, default_timeout_ms: int) -> None:
        self.name = name
        live = [b for b in rule.backends if b.weight > 0]
        self.clusters = tuple(b.cluster for b in live)
        self.single = self.clusters[0] if len(self.clusters) == 1 else None
        cum: list[int] = []
        total = 0
        for b in live:
            total += b.weight
            cum.append(total)
        self._cum = cum
        self._total = total
        self.timeout_ms = default_timeout_ms if rule.timeout_ms is None else rule.timeout_ms
        self.chain: Chain | None = build_chain([factory_for(f) for f in rule.filters])
        """The rule's filters, factories built once here; None (nothing to run) without any."""

    def pick_cluster(self, rng: random.Random | None = None) -> str:
        """Weighted choice among backends (canaries); a single backend costs nothing."""
        if self.single is not None:
            return self.single
        r = (rng or random).random() * self._total
        return self.clusters[bisect.bisect_right(self._cum, r)]


class CompiledMatch:
    __slots__ = ("exact", "prefix", "route")

    def __init__(self, match: RouteMatch, route: Route) -> None:
        value = match.path.value
        self.exact = value if match.path.type == "Exact" else None
        # Normalise "/api/" to "/api" so segment matching is one comparison.
        self.prefix = None if self.exact is not None else (value.rstrip("/") or "/")
        self.route = route

    def matches(self, path: str) -> bool:
        if self.exact is not None:
            return path == self.exact
        p = self.prefix
        if p == "/":
            return True
        assert p is not None
        return path.startswith(p) and (len(path) == len(p) or path[len(p)] == "/")

    def sort_key(self, order: int) -> tuple[int, int, int]:
        if self.exact is not None:
            return (0, -len(self.exact), order)
        assert self.prefix is not None
        return (1, -len(self.prefix), order)


class CompiledHost:
    __slots__ = ("matches", "name")

    def __init__(self, name: str, matches: Sequence[CompiledMatch]) -> None:
        self.name = name
        self.matches = tuple(matches)

    def find(self, path: str) -> Route | None:
        for m in self.matches:
            if m.matches(path):
                return m.route
        return None


def _strip_port(authority: str) -> str:
    if authority.startswith("["):  # [v6]:port
        end = authority.find("]")
        return authority[: end + 1] if end != -1 else authority
    host, sep, port = authority.rpartition(":")
    return host if sep and port.isdigit() else authority


class Router:
    """Routes by authority and path.  Immutable; a new snapshot builds a new one."""

    __slots__ = ("_any", "_exact", "_prefix", "_suffix", "name", "only")

    def __init__(self, table: RouteTable, default_timeout_ms: int) -> None:
        self.name = table.name
        self._exact: dict[str, CompiledHost] = {}
        self._suffix: list[tuple[str, CompiledHost]] = []
        self._prefix: list[tuple[str, CompiledHost]] = []
        self._any: CompiledHost | None = None
        for vh in table.virtual_hosts:
            compiled: list[tuple[tuple[int, int, int], CompiledMatch]] = []
            order = 0
            for i, rule in enumerate(vh.rules):
                route = Route(rule.name or f"{table.name}/{vh.name}/{i}", rule,
                              default_timeout_ms)
                for m in rule.matches:
                    cm = CompiledMatch(m, route)
                    compiled.append((cm.sort_key(order), cm))
                    order += 1
            compiled.sort(key=lambda kv: kv[0])
            host = CompiledHost(vh.name, [cm for _, cm in compiled])
            for dom in vh.domains:
                d = dom.lower()
                if d == "*":
                    self._any = self._any or host
                elif d.startswith("*"):
                    self._suffix.append((d[1:], host))
                elif d.endswith("*"):
                    self._prefix.append((d[:-1], host))
                else:
                    self._exact.setdefault(d, host)
        self._suffix.sort(key=lambda kv: -len(kv[0]))
        self._prefix.sort(key=lambda kv: -len(kv[0]))
        self.only: Route | None = None
        """The route of every request, when the table has nothing to choose (callers skip
        `route`): only a `*` host, whose first match is the catch-all prefix `/`.  When
        matches on headers, query or method arrive, that first match must also have none."""
        if not (self._exact or self._suffix or self._prefix) and self._any is not None:
            first = self._any.matches[0] if self._any.matches else None
            if first is not None and first.prefix == "/":
                self.only = first.route

    def host_for(self, authority: str) -> CompiledHost | None:
        a = authority.lower()
        host = self._exact.get(a)
        if host is not None:
            return host
        bare = _strip_port(a)
        if bare != a:
            host = self._exact.get(bare)
            if host is not None:
                return host
        for suffix, h in self._suffix:
            if bare.endswith(suffix) and len(bare) > len(suffix):
                return h
        for prefix, h in self._prefix:
            if bare.startswith(prefix) and len(bare) > len(prefix):
                return h
        return self._any

    def route(self, authority: str, path: str) -> Route | None:
        """The route for a request, or None (the caller answers 404)."""
        host = self.host_for(authority)
        if host is None:
            return None
        q = path.find("?")
        return host.find(path if q == -1 else path[:q])
