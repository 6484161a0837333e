"""Incremental snapshot build: a new config rebuilds only what changed.

The config is frozen msgspec structs, and a snapshot applied from a delta shares every
unchanged struct with the previous one (`tulle.proxyconfig.delta.apply_delta`), so "unchanged"
is mostly an identity test; a snapshot decoded whole (a file, SIGHUP) falls back to struct
equality, which msgspec does in C.  What is kept across a swap:

* a **router** whose route table (and the default request timeout) is unchanged; a rebuilt
  router keeps the compiled virtual hosts whose struct is unchanged and patches its host index
  (`routing/table.py`, ADR 0022), and elsewhere the `Route` objects of unchanged rules and the
  per-route state of named ones (`routing/router.py`, ADR 0016).  The route metrics are
  re-exported for the route names that changed only;
* a **cluster runtime** (pools, balancer state, SSL context) whose cluster is unchanged, or whose
  endpoints alone changed (swapped in place at commit) — `ClusterManager`.  When every cluster
  is the very struct in force (a delta that touched none), the runtimes in force are taken
  without asking it: one identity test per cluster, in C;
* a **listener context** whose listener and settings are unchanged, whose routers are the kept
  ones and whose cluster map is the one in force (it caches routing decisions that hold cluster
  runtimes).  A kept context means the listener's connections see no swap at all;
* **SSL contexts**, one per distinct TLS config (`runtime.tls`); those whose certificate files
  changed on disk, or whose identity / trust bundle section changed, are rebuilt and swapped
  in (or reloaded in place) at commit.

`prepare` builds without changing anything in force and may raise; `commit` cannot fail.
At 1,000 services an endpoint change therefore costs one cluster compare per cluster and one
balancer update, not a thousand runtimes, routers and SSL contexts; a canary weight change
costs the one virtual host (`bench/apply.py`: `route_change_apply_ms`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from operator import is_

from tulle.dataplane.listeners.listener_context import ListenerContext
from tulle.dataplane.routing.router import Router
from tulle.dataplane.runtime.tls import Rotation
from tulle.dataplane.telemetry.access_log import AccessLogger
from tulle.dataplane.telemetry.flow_records import FlowLogger
from tulle.dataplane.telemetry.golden import Golden, build_golden
from tulle.dataplane.telemetry.logs_runtime import Logger, LogsRuntime
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.telemetry.tap import TapHub
from tulle.dataplane.telemetry.tracing.runtime import SpanExporter, TracingRuntime
from tulle.dataplane.telemetry.tracing.tracer import Tracer
from tulle.dataplane.upstream.cluster import ClusterManager, PreparedClusters
from tulle.proxyconfig.model import Cluster, Listener, Node, ProxyConfig, RouteTable, Settings


@dataclass(frozen=True, slots=True)
class BuildCounts:
    """What one prepare kept and rebuilt (the apply log and tests read it)."""

    routers_built: int
    routers_kept: int
    clusters_built: int
    clusters_kept: int
    clusters_endpoints_changed: int
    contexts_built: int
    contexts_kept: int
    hosts_built: int = 0
    """Virtual hosts compiled by the routers built (those of kept routers not counted)."""
    hosts_kept: int = 0
    """Virtual hosts the routers built took over from their predecessors unchanged."""


@dataclass(slots=True)
class Prepared:
    """A snapshot's runtime objects, built but not in force."""

    routers: dict[str, tuple[RouteTable, int, Router]]
    clusters: PreparedClusters
    contexts: dict[str, ListenerContext]
    counts: BuildCounts
    rotation: Rotation
    base: dict[str, tuple[RouteTable, int, Router]]
    """The routers in force when this was prepared (the ones the new routers built from)."""
    cluster_cfgs: list[Cluster]
    settings: Settings
    golden: Golden | None = None
    """The golden metrics its contexts record into (`telemetry/golden.py`)."""
    tracer: Tracer | None = None
    """The snapshot's tracer (the one in force when `telemetry.tracing` is unchanged)."""
    loggers: tuple[AccessLogger | None, FlowLogger | None] = (None, None)
    """The snapshot's access and flow loggers (`telemetry/logs_runtime.py`)."""
    node: Node | None = None


def _same(a: object, b: object) -> bool:
    return a is b or a == b


def _routers_of(ctx: ListenerContext) -> list[Router | None]:
    return [ctx.router, *(d.router for d in ctx.destinations),
            *(c.router for c in ctx.chains)]


def _wanted_routers(lc: Listener, routers: dict[str, Router]) -> list[Router | None]:
    get = routers.get
    return [get(lc.route_table) if lc.route_table else None,
            *(get(d.route_table) if d.route_table else None for d in lc.destinations),
            *(get(c.route_table) if c.route_table else None for c in lc.filter_chains)]


class SnapshotBuilder:
    """Keeps the runtime objects of the snapshot in force and builds the next one from them."""

    def __init__(self, metrics: ProxyMetrics, clusters: ClusterManager,
                 tap: TapHub | None = None) -> None:
        self.metrics = metrics
        self.clusters = clusters
        self.tap = tap
        """The proxy's live taps, handed to every listener context (ADR 0056)."""
        self._routers: dict[str, tuple[RouteTable, int, Router]] = {}
        self._contexts: dict[str, ListenerContext] = {}
        self.counts: BuildCounts | None = None
        """What the snapshot in force kept and rebuilt (None before the first)."""
        self._cluster_cfgs: list[Cluster] | None = None
        """The cluster structs of the snapshot in force, and its settings."""
        self._settings: Settings | None = None
        self.golden: Golden | None = None
        """The golden metrics of the snapshot in force (`telemetry/golden.py`)."""
        self.tracing = TracingRuntime(metrics)
        """The tracer in force and its exporter (ADR 0055)."""
        self.logs = LogsRuntime(metrics)
        """The access and flow loggers in force (ADR 0054)."""
        self.retired_loggers: list[Logger] = []
        """Loggers the last commit replaced; the server closes (flushes) them."""

    def prepare(self, cfg: ProxyConfig) -> Prepared:
        """Build `cfg`'s runtime objects, reusing what is unchanged.  May raise; then nothing
        in force has changed."""
        settings = cfg.settings
        timeout = settings.request_timeout_ms
        self.clusters.tls.use(cfg)  # identities and trust bundles TLS settings name
        rotation = self.clusters.tls.rotation()
        routers: dict[str, tuple[RouteTable, int, Router]] = {}
        r_kept = h_built = h_kept = 0
        for t in cfg.route_tables:
            old = self._routers.get(t.name)
            if old is not None and old[1] == timeout and _same(old[0], t):
                routers[t.name] = old
                r_kept += 1
            else:  # the old router hands over its hosts and routes that are still the same
                router = Router(t, timeout, old[2] if old else None)
                routers[t.name] = (t, timeout, router)
                h_kept += router.compiled.kept
                h_built += len(t.virtual_hosts) - router.compiled.kept
        by_name = {name: r for name, (_, _, r) in routers.items()}
        zone = cfg.node.zone
        clusters = ((self._clusters_in_force(cfg.clusters, settings)
                     if zone == self.clusters.zone else None)
                    or self.clusters.prepare(cfg.clusters, settings, zone))
        contexts: dict[str, ListenerContext] = {}
        c_kept = 0
        golden = build_golden(self.metrics, cfg, self.golden)
        tracer = self.tracing.prepare(cfg)
        for lc in cfg.listeners:
            ctx = self._contexts.get(lc.name)
            if (ctx is not None and ctx.golden is golden and ctx.tracing is tracer
                    and self._reusable(ctx, lc, settings, clusters, by_name)):
                c_kept += 1
            else:
                ctx = ListenerContext(lc, settings, by_name, clusters.runtimes, self.metrics,
                                      self.clusters.tls, golden, tap=self.tap,
                                      tracing=tracer)
            contexts[lc.name] = ctx
        counts = BuildCounts(
            routers_built=len(routers) - r_kept, routers_kept=r_kept,
            clusters_built=len(clusters.fresh), clusters_kept=clusters.kept,
            clusters_endpoints_changed=len(clusters.updates),
            contexts_built=len(contexts) - c_kept, contexts_kept=c_kept,
            hosts_built=h_built, hosts_kept=h_kept)
        return Prepared(routers, clusters, contexts, counts, rotation, self._routers,
                        cfg.clusters, settings, golden, tracer, self.logs.prepare(cfg), cfg.node)

    def _clusters_in_force(self, cfgs: list[Cluster], settings: Settings) -> PreparedClusters | None:
        """What `ClusterManager.prepare` would return when every cluster is the very struct in
        force under the same settings (every runtime kept, the dict in force), found by one
        identity test per cluster; None when anything may differ."""
        last = self._cluster_cfgs
        if (last is None or len(last) != len(cfgs) or self._settings is None
                or not _same(self._settings, settings) or not all(map(is_, last, cfgs))):
            return None
        current = self.clusters.clusters
        return PreparedClusters(current, [], [], len(current), self.clusters.zone)

    @staticmethod
    def _reusable(ctx: ListenerContext, lc: Listener, settings: Settings,
                  clusters: PreparedClusters, routers: dict[str, Router]) -> bool:
        if ctx.clusters is not clusters.runtimes:
            return False
        if not (_same(ctx.cfg, lc) and _same(ctx.settings, settings)):
            return False
        return all(a is b for a, b in zip(_routers_of(ctx), _wanted_routers(lc, routers),
                                          strict=True))

    def commit(self, prepared: Prepared) -> list[SpanExporter]:
        """Put `prepared` in force (the caller moves the listener handles' pointers).  Answers
        the span exporters a tracing change retired (the caller closes them: they flush)."""
        retired = self.tracing.commit(prepared.tracer)
        self.clusters.commit(prepared.clusters)
        if prepared.rotation:
            swapped = self.clusters.tls.rotate(prepared.rotation)
            for rt in self.clusters.clusters.values():
                ctx = rt.ssl_context
                if ctx is not None and id(ctx) in swapped:
                    rt.ssl_context = swapped[id(ctx)]
        if prepared.counts.routers_built or prepared.routers.keys() != self._routers.keys():
            if prepared.base is self._routers:
                self._update_route_stats(prepared.routers)
            else:
                self._export_route_stats(prepared.routers)
        self._routers = prepared.routers
        self._contexts = prepared.contexts
        self.golden = prepared.golden
        self._cluster_cfgs = prepared.cluster_cfgs
        self._settings = prepared.settings
        self.counts = prepared.counts
        if prepared.node is not None:
            self.retired_loggers += self.logs.commit(prepared.node, prepared.loggers,
                                                     prepared.contexts.values())
        return retired

    def _export_route_stats(self, routers: dict[str, tuple[RouteTable, int, Router]]) -> None:
        """The per-route request series are the states of the routes in force: a route that
        is gone loses its series, one that carried its state keeps counting it."""
        self.metrics.route_requests.children = {
            (table, name): route.requests
            for table, (_, _, router) in routers.items()
            for name, route in router.routes.items()}

    def _update_route_stats(self, routers: dict[str, tuple[RouteTable, int, Router]]) -> None:
        """`_export_route_stats` for routers built from those in force, touching only the
        series of the route names that changed (a patched router says which)."""
        children = self.metrics.route_requests.children
        old = self._routers
        for table, (_, _, was) in old.items():
            if table not in routers:
                for name in was.routes:
                    children.pop((table, name), None)
        for table, (_, _, router) in routers.items():
            prev = old.get(table)
            if prev is not None and prev[2] is router:
                continue
            touched = router.compiled.touched
            names: Iterable[str]
            if prev is None:
                names = router.routes
            elif touched is None:  # built by the ordered walk: any name may have changed
                names = (*prev[2].routes, *router.routes)
            else:
                names = touched
            for name in names:
                route = router.routes.get(name)
                if route is None:
                    children.pop((table, name), None)
                else:
                    children[(table, name)] = route.requests
