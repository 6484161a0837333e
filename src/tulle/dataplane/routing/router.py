"""Compiled HTTP routing: a request head → the route that applies, built once per snapshot.

Lookup order follows Gateway API precedence so routes written for other meshes behave the same:

1. Virtual host by authority: exact host, then the longest `*.suffix` wildcard, then the longest
   `prefix.*` wildcard, then `*`.  The port is dropped from the authority before matching unless
   a domain names one explicitly.
2. Within a host, candidate matches are sorted once (`CompiledMatch.sort_key`): an Exact path,
   then a regular expression (longer patterns first; Gateway API leaves its place to the
   implementation, this is Envoy Gateway's), then the longest prefix; among equal paths a
   match with a method, then the most header conditions, then the most query conditions;
   then declaration order.  The first match whose path and conditions hold wins.

Per-request work: one dict lookup for the host (authorities are memoised per router), then a
short scan of pre-sorted matches; none at all when the table sends everything to one rule
(`Router.only`: one `*` host whose first match is the catch-all with no conditions).  A host
none of whose matches has conditions besides the path scans its paths only
(`CompiledHost.plain`): header, query and method matching cost nothing where they are not
used.  A host with conditions is compiled into one decision (`routing/decide.py`, ADR 0027):
the same answer as the scan, with each distinct condition tested at most once per request and
exact values looked up.

Routes are runtime objects that outlive a snapshot when they can (`Router(previous=...)`): an
unchanged rule keeps its `Route` (filter factories and all); a changed rule keeps its per-route
state (`RouteState`) when it is named, keyed by that name.  ADR 0016.  Whole virtual hosts
outlive it too: a host whose struct is unchanged keeps its compiled matches and routes, and
the host index is patched rather than rebuilt (`routing/table.py`, `routing/hosts.py`, ADR 0022).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence
from typing import Final

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.filters import factory_for
from tulle.dataplane.http.chain import Chain, build_chain
from tulle.dataplane.http.retry import RetryRuntime
from tulle.dataplane.routing.decide import Decision
from tulle.dataplane.routing.match import Condition, PathMatcher, conditions_of
from tulle.dataplane.routing.state import RouteState
from tulle.dataplane.routing.table import CompiledTable, HostEntry, route_name
from tulle.dataplane.upstream.attempt import AttemptRequest
from tulle.proxyconfig.model import RouteMatch, RouteRule, RouteTable, VirtualHost


class Route:
    """A matched rule, ready to use: its backends (cluster names), timeout, filters and state.

    Built once per rule and kept across snapshots while the rule and the default timeout are
    unchanged (`Router`), so whatever it holds (filter factories, `state`) is per route, not
    per snapshot."""

    __slots__ = ("_cum", "_total", "addressed", "attempt", "backend_chains", "chain", "clusters",
                 "default_timeout_ms", "name", "requests", "retry", "rule", "single", "special",
                 "state", "stream_idle", "timeout_ms")

    def __init__(self, name: str, rule: RouteRule, default_timeout_ms: int,
                 state: RouteState | None = None, addressed: str = "") -> None:
        self.name = name
        self.addressed = addressed
        """`namespace/name` of the Service its requests were addressed to (its virtual host's
        `service`): the request stats count them under it too when their backend is another
        Service's (`ListenerContext.stats`).  Empty: none."""
        self.rule = rule
        self.default_timeout_ms = default_timeout_ms
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
        self.state = state if state is not None else RouteState()
        """What this route keeps across swaps (request stats, rate-limit buckets)."""
        own = [factory_for(f, rule.matches, self.clusters) for f in rule.filters]
        for f in own:
            adopt = getattr(f, "adopt", None)
            if adopt is not None:
                adopt(self.state.filters)
        self.chain: Chain | None = build_chain(own)
        """The rule's filters, factories built once here; None (nothing to run) without any."""
        self.backend_chains: dict[str, Chain | None] | None = {
            b.cluster: build_chain(own + [factory_for(f) for f in b.filters])
            for b in live if b.filters} or None
        """For each backend with filters of its own: the rule's and its filters, for requests
        sent to it (validation keeps such a cluster once per rule); None: no backend has."""
        self.attempt = (AttemptRequest(per_try_timeout=rule.backend_timeout_ms / 1000)
                        if rule.backend_timeout_ms else None)
        """What each try of this route asks of its cluster (the per-try deadline); None:
        nothing, and the route pays nothing."""
        per_try = (rule.backend_timeout_ms or 0) / 1000
        self.retry = (RetryRuntime(rule.retry, per_try)
                      if rule.retry is not None and rule.retry.num_retries else None)
        """The rule's retry policy, compiled; None: no retries (and nothing paid for them)."""
        self.stream_idle = (rule.stream_idle_timeout_ms or 0) / 1000
        """Seconds a request may go without body bytes either way (0: no limit)."""
        self.special = (self.chain is not None or self.attempt is not None
                        or self.backend_chains is not None or self.retry is not None
                        or self.stream_idle > 0 or addressed != "")
        """Filters, a try request or an addressed Service: the router step's one test for the
        plain path (a decision per route: as cheap, two dict lookups either way)."""
        self.requests = self.state.requests
        """`state.requests`, one attribute hop nearer: the router step counts each request."""

    def pick_cluster(self, rng: random.Random | None = None) -> str:
        """Weighted choice among backends (canaries); a single backend costs nothing."""
        if self.single is not None:
            return self.single
        r = (rng or random).random() * self._total
        return self.clusters[bisect.bisect_right(self._cum, r)]


_PATH_RANK: Final = {"Exact": 0, "RegularExpression": 1, "PathPrefix": 2}


class CompiledMatch:
    __slots__ = ("conditions", "match", "path", "prefix", "route", "specificity")

    def __init__(self, match: RouteMatch, route: Route) -> None:
        self.match = match
        """The contract's match this was built from (`tulle explain` names it)."""
        self.path = PathMatcher(match.path)
        self.prefix = self.path.prefix
        """The normalised path prefix (None for Exact and regular expressions)."""
        self.conditions: tuple[Condition, ...] = conditions_of(match)
        """Conditions besides the path, all of which must hold; () for a path-only match."""
        self.specificity = (0 if match.method is None else -1, -len(match.headers),
                            -len(match.query_params))
        self.route = route

    def matches(self, path: bytes, head: RequestHead, query: bytes) -> bool:
        if not self.path.matches(path):
            return False
        for c in self.conditions:  # noqa: SIM110 (a loop allocates nothing; all() a generator)
            if not c.matches(head, query):
                return False
        return True

    def sort_key(self, order: int) -> tuple[int, int, int, int, int, int]:
        """Gateway API precedence (see the module docstring), then declaration order."""
        p = self.path
        length = len(p.prefix) if p.prefix is not None else len(p.value)
        return (_PATH_RANK[p.type], -length, *self.specificity, order)


class CompiledHost:
    __slots__ = ("_paths", "decision", "find", "matches", "name", "plain")

    def __init__(self, name: str, matches: Sequence[CompiledMatch]) -> None:
        self.name = name
        self.matches = tuple(matches)
        self.plain = not any(m.conditions for m in self.matches)
        """No match has conditions besides its path: `find` tests paths only."""
        self._paths = tuple((m.path.matches, m.route) for m in self.matches)
        self.decision = None if self.plain else Decision(self.matches)
        """With conditions: the matches as one decision, each distinct condition tested
        once per request (`routing/decide.py`); routes exactly as the scan of `matches`."""
        self.find: Callable[[bytes, RequestHead, bytes], Route | None] = (
            _path_finder(self._paths) if self.decision is None else self.decision.find)
        """`find(path, head, query)`: the route of the first match that holds, or None (a
        function held, not a method: one call fewer per request)."""

    def scan(self, path: bytes, head: RequestHead, query: bytes) -> Route | None:
        """The route of the first match (in precedence order) that holds, found by trying
        them in turn: what `find` must agree with (the tests compare the two)."""
        for m in self.matches:
            if m.matches(path, head, query):
                return m.route
        return None


def _path_finder(paths: tuple[tuple[Callable[[bytes], bool], Route], ...],
                 ) -> Callable[[bytes, RequestHead, bytes], Route | None]:
    """`find` of a host whose matches test paths only (a closure over them, not a bound
    method of the host: no reference cycle)."""
    def find(path: bytes, head: RequestHead, query: bytes) -> Route | None:
        for test, route in paths:
            if test(path):
                return route
        return None
    return find


_NO_HOST: Final = CompiledHost("", ())
"""What `Router._seen` remembers for an authority no host takes: it routes nothing."""
_SEEN_MAX: Final = 256
_SEEN_LONGEST: Final = 262
"""The longest authority remembered (a 253-byte DNS name and a port): the memo holds at most
`_SEEN_MAX` of them, ~70 KiB, whatever clients send."""


def _strip_port(authority: str) -> str:
    if authority.startswith("["):  # [v6]:port
        end = authority.find("]")
        return authority[: end + 1] if end != -1 else authority
    host, sep, port = authority.rpartition(":")
    return host if sep and port.isdigit() else authority


class Router:
    """Routes by authority, path and the request's conditions.  Immutable; a new snapshot
    builds a new one, taking over from `previous` what is still the same: the compiled virtual
    hosts whose `VirtualHost` struct is unchanged (whole, routes and all), the routes of
    unchanged rules elsewhere, and the host index, patched (`routing/hosts.py`, ADR 0022)."""

    __slots__ = ("_any", "_exact", "_prefix", "_seen", "_suffix", "compiled",
                 "default_timeout_ms", "name", "only", "routes")

    def __init__(self, table: RouteTable, default_timeout_ms: int,
                 previous: Router | None = None) -> None:
        self.name = table.name
        self.default_timeout_ms = default_timeout_ms
        # the previous compiled hosts can be kept when built for this table with this default
        prior = previous.compiled if (
            previous is not None and previous.name == table.name
            and previous.default_timeout_ms == default_timeout_ms) else None

        def compile_host(vh: VirtualHost, routes: dict[str, Route],
                         old: dict[str, Route]) -> HostEntry:
            return _compile(table.name, vh, default_timeout_ms, routes, old)

        compiled = CompiledTable.build(table, compile_host, prior,
                                       previous.routes if previous is not None else {})
        self.compiled: CompiledTable = compiled
        """The compiled hosts, kept by the next snapshot's router where unchanged."""
        index = compiled.index
        self._exact = index.exact
        self._suffix = index.suffix
        self._prefix = index.prefix
        self._any = index.any
        self._seen: dict[bytes, CompiledHost] = {}
        """Authorities as received → their host (`_NO_HOST` for none): lowering, dropping the
        port and the wildcard scans, once per distinct authority.  At most `_SEEN_MAX`
        entries of at most `_SEEN_LONGEST` bytes (emptied when full, so a client sending
        endless names costs a lookup each, and longer ones are looked up every time)."""
        self.routes: dict[str, Route] = compiled.routes
        """The routes by name: the key that carries them, and their state, across swaps.
        Rules sharing a name (a route attached to several hosts) share its state."""
        self.only: Route | None = None
        """The route of every request, when the table has nothing to choose (callers skip
        `route`): only a `*` host, whose first match is the catch-all prefix `/` without
        conditions."""
        if not (self._exact or self._suffix or self._prefix) and self._any is not None:
            first = self._any.matches[0] if self._any.matches else None
            if first is not None and first.prefix == b"/" and not first.conditions:
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

    def route(self, head: RequestHead) -> Route | None:
        """The route for a request, or None (the caller answers 404)."""
        seen = self._seen
        authority = head.authority
        host = seen.get(authority)
        if host is None:
            host = self.host_for(authority.decode("latin-1")) or _NO_HOST
            if len(authority) <= _SEEN_LONGEST:
                if len(seen) >= _SEEN_MAX:
                    seen.clear()
                seen[authority] = host
        path, _, query = head.path.partition(b"?")
        return host.find(path, head, query)


def _compile(table: str, vh: VirtualHost, default_timeout_ms: int, routes: dict[str, Route],
             old: dict[str, Route]) -> HostEntry:
    """Compile one virtual host: its rules become routes (registered in `routes`, taken over
    from `old` by name when they can be) and its matches are sorted by precedence."""
    compiled: list[tuple[tuple[int, ...], CompiledMatch]] = []
    mine: list[Route] = []
    order = 0
    for i, rule in enumerate(vh.rules):
        name = route_name(table, vh, i, rule)
        same = routes.get(name)
        if same is None:
            route = routes[name] = _carry(old.get(name), name, rule, default_timeout_ms,
                                          vh.service)
        elif (same.rule is rule or same.rule == rule) and same.addressed == vh.service:
            route = same  # one rule under several hosts (a route on several ports)
        else:  # another rule of the same name: a route of its own, the same state
            route = Route(name, rule, default_timeout_ms, same.state, vh.service)
        mine.append(route)
        for m in rule.matches:
            cm = CompiledMatch(m, route)
            compiled.append((cm.sort_key(order), cm))
            order += 1
    compiled.sort(key=lambda kv: kv[0])
    return HostEntry(vh, CompiledHost(vh.name, [cm for _, cm in compiled]), mine)


def _carry(old: Route | None, name: str, rule: RouteRule, default_timeout_ms: int,
           addressed: str = "") -> Route:
    """The route for `rule` given the route of the same name in the previous snapshot: kept
    whole when the rule is the same; else a new route that takes over the old one's state
    when the rule is named (an unnamed rule's name is only its position: a changed rule there
    is another route, and starts afresh)."""
    if old is None:
        return Route(name, rule, default_timeout_ms, addressed=addressed)
    if (old.default_timeout_ms == default_timeout_ms and (old.rule is rule or old.rule == rule)
            and old.addressed == addressed):
        return old
    return Route(name, rule, default_timeout_ms, old.state if rule.name else None, addressed)
