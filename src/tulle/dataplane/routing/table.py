"""A route table's compiled virtual hosts, kept across snapshots while their structs are the same.

Why: at 1,000 services the outbound route table holds a thousand virtual hosts, and a canary
weight change re-delivers one of them; every other `VirtualHost` arrives as the very struct the
previous snapshot had (ADR 0018).  Compiling the table again (a thousand hosts, their routes,
sorted matches and eight thousand domains) cost ~5 ms of event loop on the proxy; keeping what
is the same costs the changed host (ADR 0022).

Two ways from the previous `CompiledTable` to the next:

* `_patched`, the common delta cases: the hosts are the previous list with some replaced in
  place (a delta upserts a changed host where it was), or with one run of hosts added or
  removed between an unchanged head and tail (a Service comes or goes).  The lists are
  compared by identity in C (`map(operator.is_)`); the routes-by-name dict and the host index
  (`routing/hosts.py`) are copied and patched with the changed hosts only.  It declines (None)
  when hosts moved, when more than a few came at once, or when a route name it touches is
  shared with another host (the first host in table order owns such a name: order questions
  go to the walk below).
* `_ordered`, everything else: walks the hosts in table order, keeps a previous compiled host
  (looked up by name) whose struct is the same (identical; or equal, after a whole snapshot was
  decoded anew), compiles the others.

Either way the result routes exactly as a table compiled from scratch (a property test says so:
tests/unit/dataplane/routing/test_incremental_property.py); what differs is only which objects
are reused: a kept host keeps its `Route` objects and with them filter factories and per-route
state, which is the point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import is_
from typing import TYPE_CHECKING

from tulle.dataplane.routing.hosts import HostIndex

if TYPE_CHECKING:
    from tulle.dataplane.routing.router import CompiledHost, Route
    from tulle.proxyconfig.model import RouteRule, RouteTable, VirtualHost

_SPLICE_MAX = 8
"""Hosts that came (between an unchanged head and tail) that `_patched` compiles; more go to
the ordered walk, which keeps any of them it can."""

CompileHost = Callable[["VirtualHost", "dict[str, Route]", "dict[str, Route]"], "HostEntry"]
"""Compiles one virtual host: (host, the routes registered so far by name, which it extends;
the previous snapshot's routes by name, whose state it takes over)."""


def route_name(table: str, vh: VirtualHost, i: int, rule: RouteRule) -> str:
    """The key a rule's route (and its state) is kept by: its name, else its position."""
    return rule.name or f"{table}/{vh.name}/{i}"


class HostEntry:
    """One compiled virtual host with its domains sorted by kind (lower case, each once):
    what a later router keeps whole while the `VirtualHost` struct is the same."""

    __slots__ = ("any", "domains", "exact", "host", "prefix", "routes", "suffix", "vh")

    def __init__(self, vh: VirtualHost, host: CompiledHost, routes: Sequence[Route]) -> None:
        self.vh = vh
        self.host = host
        self.routes = tuple(routes)
        """The host's routes in rule order, one per rule."""
        self.domains = tuple(dict.fromkeys(d.lower() for d in vh.domains))
        self.any = "*" in self.domains
        self.exact = tuple(d for d in self.domains if "*" not in d)
        self.suffix = tuple(d[1:] for d in self.domains if d != "*" and d.startswith("*"))
        self.prefix = tuple(d[:-1] for d in self.domains
                            if d != "*" and not d.startswith("*") and d.endswith("*"))


class CompiledTable:
    """The compiled hosts of one route table (in table order), its routes by name and its
    host index.  Immutable once built; the next snapshot's router builds from it."""

    __slots__ = ("entries", "index", "kept", "routes", "shared", "touched", "vhs")

    def __init__(self, vhs: list[VirtualHost], entries: tuple[HostEntry, ...],
                 routes: dict[str, Route], shared: frozenset[str], index: HostIndex,
                 kept: int, touched: frozenset[str] | None = None) -> None:
        self.vhs = vhs
        """The table's `virtual_hosts` list, for the identity comparison of the next build."""
        self.entries = entries
        self.routes = routes
        """Routes by name; a name several rules share maps to the first in table order."""
        self.shared = shared
        """Route names that more than one host uses."""
        self.index = index
        self.kept = kept
        """How many compiled hosts came from the previous table unchanged."""
        self.touched = touched
        """The route names whose entry in `routes` may differ from the previous table's (a
        patched build: the changed hosts' names, gone or new); None when any may (built by
        the ordered walk, or from nothing).  What the route metrics re-export."""

    @classmethod
    def build(cls, table: RouteTable, compile_host: CompileHost, previous: CompiledTable | None,
              old_routes: dict[str, Route]) -> CompiledTable:
        """Compile `table`, keeping the hosts of `previous` (the same table compiled with the
        same defaults, or None) that are unchanged.  `old_routes`: the previous routes by name,
        whose state carries over even when nothing else can be kept."""
        if previous is not None:
            done = cls._patched(table, compile_host, previous)
            if done is not None:
                return done
        return cls._ordered(table, compile_host, previous, old_routes)

    @classmethod
    def _patched(cls, table: RouteTable, compile_host: CompileHost,
                 prior: CompiledTable) -> CompiledTable | None:
        vhs = table.virtual_hosts
        before = prior.entries
        if len(vhs) == len(before):  # hosts replaced in place, wherever they are
            flags = list(map(is_, prior.vhs, vhs))
            at: list[int] = []
            i = -1
            for _ in range(flags.count(False)):
                i = flags.index(False, i + 1)
                if before[i].vh != vhs[i]:  # equal (a snapshot decoded anew): kept
                    at.append(i)
            if not at:
                return cls(vhs, before, prior.routes, prior.shared, prior.index, len(before),
                           frozenset())
            dropped = [before[i] for i in at]
            fresh = [vhs[i] for i in at]
        else:  # hosts came or went: one run of them, between an unchanged head and tail
            head = _common(prior.vhs, vhs)
            rest = min(len(before), len(vhs)) - head
            tail = min(_common(prior.vhs[::-1], vhs[::-1]), rest)
            fresh = vhs[head:len(vhs) - tail]
            if len(fresh) > _SPLICE_MAX:
                return None
            dropped = list(before[head:len(before) - tail])
            at = list(range(head, head + len(fresh)))
        routes = prior.routes.copy()
        shared = prior.shared
        for b in dropped:
            for r in b.routes:
                if r.name in shared:
                    return None
                routes.pop(r.name, None)
        added: list[HostEntry] = []
        for vh in fresh:
            for j, rule in enumerate(vh.rules):
                if route_name(table.name, vh, j, rule) in routes:
                    return None  # a name another host uses: who owns it is an order question
            added.append(compile_host(vh, routes, prior.routes))
        if len(vhs) == len(before):
            entries = list(before)
            for i, e in zip(at, added, strict=True):
                entries[i] = e
        else:
            entries = [*before[:head], *added, *before[len(before) - tail:]]
        index = prior.index.patched(entries, dropped, added)
        touched = frozenset(r.name for e in (*dropped, *added) for r in e.routes)
        return cls(vhs, tuple(entries), routes, shared, index, len(entries) - len(added),
                   touched)

    @classmethod
    def _ordered(cls, table: RouteTable, compile_host: CompileHost, prior: CompiledTable | None,
                 old: dict[str, Route]) -> CompiledTable:
        before = prior.entries if prior is not None else ()
        n_before = len(before)
        by_name: dict[str, int] | None = None
        routes: dict[str, Route] = {}
        owner: dict[str, HostEntry] = {}
        shared: set[str] = set()
        taken: set[int] = set()
        entries: list[HostEntry] = []
        added: list[HostEntry] = []
        last = -1  # the previous position of the last host kept
        in_order = True  # the kept hosts are in their previous order
        for i, vh in enumerate(table.virtual_hosts):
            e: HostEntry | None = None
            was = i
            if i < n_before and before[i].vh is vh:
                e = before[i]
            elif before:
                if by_name is None:
                    by_name = {}
                    for j, x in enumerate(before):
                        by_name.setdefault(x.vh.name, j)
                was = by_name.get(vh.name, -1)
                if was >= 0 and (before[was].vh is vh or before[was].vh == vh):
                    e = before[was]
            if e is not None and id(e) not in taken and _fits(e, routes):
                taken.add(id(e))
                in_order = in_order and was > last
                last = was
                for r in e.routes:
                    routes.setdefault(r.name, r)
            else:
                e = compile_host(vh, routes, old)
                added.append(e)
            for r in e.routes:
                if owner.setdefault(r.name, e) is not e:
                    shared.add(r.name)
            entries.append(e)
        if prior is not None and len(added) < len(entries) and (
                in_order or not prior.index.contested):  # else who wins a domain may change
            dropped = [b for b in before if id(b) not in taken]
            index = prior.index.patched(entries, dropped, added)
        else:
            index = HostIndex.build(entries)
        return cls(table.virtual_hosts, tuple(entries), routes, frozenset(shared), index,
                   len(entries) - len(added))


def _common(a: list[VirtualHost], b: list[VirtualHost]) -> int:
    """How many leading hosts two lists share, by identity (compared in C)."""
    same = list(map(is_, a, b))
    return same.index(False) if False in same else len(same)


def _fits(e: HostEntry, routes: dict[str, Route]) -> bool:
    """A kept host's routes agree with those already registered under their names: same state
    (rules sharing a name share it).  When not, the host is compiled again instead."""
    for r in e.routes:
        got = routes.get(r.name)
        if got is not None and got.state is not r.state:
            return False
    return True
