"""Clusters at run time: endpoints, a load balancer, and a pool per endpoint.

`ClusterManager.prepare` turns a snapshot's clusters into `ClusterRuntime`s and `commit` puts
them in force, rebuilding only what changed (DESIGN.md section 4, "Incremental apply"):

* a cluster whose config struct is unchanged keeps its runtime object, with its pools, balancer
  state and SSL context (the common case: a swap that changed something else);
* a cluster whose *endpoints* alone changed keeps its runtime too; at commit its endpoint list
  and balancer are swapped in place, surviving endpoints keep their state and pools, removed
  endpoints' pools close as their last exchange ends;
* any other change builds a new runtime: endpoint state and (when protocol, TLS and stream
  limits are unchanged) pools of surviving endpoints carry over by cluster name, the rest
  drain.  SSL contexts come from a cache shared per distinct TLS config
  (`tulle.dataplane.runtime.tls`).

In-flight requests finish on the connections they have (decision 3 of DESIGN.md); nothing is
re-dialled because an unrelated route changed.

Pools are chosen by the cluster's protocol through `POOL_FACTORIES`, so the HTTP/2 pool plugs
in beside the HTTP/1 one.

A request goes down the layers of DESIGN.md section 4 in `ClusterRuntime.open_stream`: the
cluster's limits (`limits.py`; the counters carry over by cluster name, the thresholds change at
commit), the balancer's pick (with the request's hash key and the endpoints to avoid), then the
endpoint's pool, whose stream is the try itself (`attempt.Attempt`, its base class: in-flight
counts, latency, outcome, the one transparent replay; ADR 0017).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Collection, Iterable
from time import monotonic
from typing import Final, Protocol

import msgspec
from mypy_extensions import mypyc_attr

from tulle.dataplane.exchange import RequestHead, ResponseSink, UpstreamError, UpstreamStream
from tulle.dataplane.protocols.http1 import H1Limits
from tulle.dataplane.runtime.tls import TLSContexts, build_client_context
from tulle.dataplane.security.spiffe import PeerCheck, expect
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.upstream.attempt import AttemptRequest, OutcomeHook, Refused
from tulle.dataplane.upstream.lb import NO_AVOID, EndpointState, LoadBalancer, Options, build
from tulle.dataplane.upstream.lb_hash import hash_key
from tulle.dataplane.upstream.limits import Limits
from tulle.proxyconfig.model import Cluster, Settings


class PoolStream(UpstreamStream, Protocol):
    """An exchange a pool opened: the `UpstreamStream`, and an `Attempt` (its base class)."""

    def _start_try(self, request: AttemptRequest) -> None: ...


class Pool(Protocol):
    cluster: ClusterRuntime
    """The runtime of the snapshot in force; `ClusterManager.commit` moves it on a swap."""

    def open_stream(self, head: RequestHead, sink: ResponseSink,
                    end_stream: bool) -> PoolStream:
        """An exchange on the pool; raises a 503 UO `UpstreamError` when the request would
        wait past the cluster's pending limit.  Never calls `sink` before returning."""

    def sweep(self, now: float, idle_timeout: float) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


PoolFactory = Callable[["ClusterRuntime", EndpointState], Pool]


def _h1_pool(cluster: ClusterRuntime, ep: EndpointState) -> Pool:
    from tulle.dataplane.upstream.http1 import H1Pool

    return H1Pool(cluster, ep)


def _h2_pool(cluster: ClusterRuntime, ep: EndpointState) -> Pool:
    from tulle.dataplane.upstream.http2_pool import H2Pool

    return H2Pool(cluster, ep)


POOL_FACTORIES: Final[dict[str, PoolFactory]] = {"http1": _h1_pool, "http2": _h2_pool}
"""Upstream protocol -> pool constructor.  `tcp` clusters have no pool (the relay dials)."""


def client_ssl_context(cfg: Cluster) -> ssl.SSLContext | None:
    """A fresh upstream context for `cfg` (uncached; `ClusterManager` shares them)."""
    return None if cfg.tls is None else build_client_context(cfg.tls, cfg.protocol)


def _settings_key(settings: Settings, zone: str = "") -> tuple[int, int, str]:
    """The process settings (and the node's zone) a `ClusterRuntime` copies: a change needs
    new runtimes."""
    return (settings.max_response_header_bytes, settings.buffer_high_water_bytes, zone)


@mypyc_attr(allow_interpreted_subclasses=True)  # tests stand in for it (ADR 0052)
class ClusterRuntime:
    """One cluster of one snapshot.  Everything a request needs is an attribute lookup away."""

    def __init__(self, cfg: Cluster, settings: Settings, metrics: ProxyMetrics,
                 endpoints: list[EndpointState], pools: dict[str, Pool],
                 tls: TLSContexts | None = None, limits: Limits | None = None,
                 on_outcome: OutcomeHook | None = None, zone: str = "") -> None:
        self.cfg = cfg
        """The config in force; an endpoint-only change replaces it (and the endpoints) in
        place at commit."""
        self.settings_key = _settings_key(settings, zone)
        self.lb_options = Options.of(cfg.lb, zone)
        """The balancer's settings (kept across balancer rebuilds of this runtime)."""
        self.hash_policies = cfg.lb.hash_policies if cfg.lb is not None else None
        """What a request's hash key is made of; None (no hashing): nothing is computed."""
        self.name = cfg.name
        self.protocol = cfg.protocol
        self.connect_timeout = cfg.connect_timeout_ms / 1000
        self.idle_timeout = cfg.idle_timeout_ms / 1000
        self.max_idle = cfg.max_idle_per_endpoint
        self.max_concurrent_streams = cfg.max_concurrent_streams
        self.max_response_header_bytes = settings.max_response_header_bytes
        self.h1_limits = H1Limits(settings.max_header_count, settings.max_chunk_extension_bytes,
                                  settings.max_trailer_bytes)
        self.high_water = settings.buffer_high_water_bytes
        self.ssl_context = tls.client(cfg) if tls is not None else client_ssl_context(cfg)
        self.sni = cfg.tls.server_name if cfg.tls else ""
        ids = cfg.tls.expected_spiffe_ids if cfg.tls else None
        self.peer_check: PeerCheck | None = expect(
            ids, metrics.upstream_peer_identity_rejected.labels(cfg.name)) if ids else None
        """Checks the server's SPIFFE ID after each TLS handshake (the dialler's
        `peer_check`); None without `tls.expected_spiffe_ids`."""
        self.endpoints = endpoints
        self.lb: LoadBalancer = build(cfg.lb_policy, endpoints, self.lb_options)
        self.pools = pools
        self.m_connect_failures = metrics.upstream_connect_failures.labels(cfg.name)
        self.m_mirrors = metrics.mirror_requests
        """Requests mirrored to this cluster (`filters/mirror.py`), by outcome."""
        self.m_connections_active = metrics.upstream_connections_active.labels(cfg.name)
        self.m_connections_total = metrics.upstream_connections_total.labels(cfg.name)
        self._factory = POOL_FACTORIES.get(cfg.protocol)
        self.limits = limits if limits is not None else Limits(cfg.name, cfg.limits, metrics)
        if limits is None:
            self.limits.budget.configure(cfg.retry_budget)
        self.m_retries = metrics.upstream_retries
        """Retry counters, labelled when first used (`http/retry.py`): clusters that never
        retry add nothing to /metrics."""
        self.m_budget_exhausted = metrics.upstream_retry_budget_exhausted
        self.m_retries_exhausted = metrics.upstream_retries_exhausted
        """Counters shared by every runtime of this cluster name (carried over by
        `ClusterManager`); thresholds of the config in force."""
        self.on_outcome = on_outcome
        """Told each try's outcome (`attempt.OutcomeHook`); None: nobody listens."""
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def pick(self, key: int | None = None,
             avoid: Collection[EndpointState] = NO_AVOID) -> EndpointState | None:
        return self.lb.pick(key, avoid)

    def takes(self, ep: EndpointState, avoid: Collection[EndpointState] = NO_AVOID) -> bool:
        """Whether a try may go to `ep`, one of this runtime's current endpoints, without the
        balancer: healthy and not avoided.  Only tries that prefer an endpoint
        (`AttemptRequest.prefer`) ask; whoever set it found `ep` among `endpoints` in the
        same loop turn (`filters/session.py`)."""
        return ep._healthy and not (avoid and ep in avoid)

    def pool_for(self, ep: EndpointState) -> Pool:
        pool = self.pools.get(ep.key)
        if pool is None:
            if self._factory is None:
                raise RuntimeError(f"cluster {self.name} ({self.protocol}) has no request pool")
            pool = self.pools[ep.key] = self._factory(self, ep)
        return pool

    def open_stream(self, head: RequestHead, sink: ResponseSink, end_stream: bool,
                    request: AttemptRequest | None = None) -> UpstreamStream | None:
        """Open a try of the request: limits, the balancer's pick, the try on the pool (its
        stream is an `Attempt`).

        None when the cluster has no usable endpoint.  Never calls `sink` before returning:
        a limit's refusal (503 UO) and every failure arrive from a later callback."""
        limits = self.limits
        if limits.requests >= limits.max_requests:
            return Refused(sink, limits.overflow("requests"), self.loop)
        if request is None:
            ep = self.lb.pick(hash_key(head, self.hash_policies) if self.hash_policies
                              else None)
        else:
            ep = request.prefer
            if ep is not None and not self.takes(ep, request.avoid):
                ep = None
            if ep is None:
                key = request.hash_key
                if key is None and self.hash_policies:
                    key = hash_key(head, self.hash_policies)
                ep = self.lb.pick(key, request.avoid)
            if request.retry and limits.retries >= limits.max_retries:
                return Refused(sink, limits.overflow("retries"), self.loop)
        if ep is None:
            return None
        pool = self.pools.get(ep.key)
        if pool is None:
            pool = self.pool_for(ep)
        try:
            stream = pool.open_stream(head, sink, end_stream)  # counts the try in
        except UpstreamError as err:  # the pool's pending limit
            return Refused(sink, err, self.loop)
        if request is not None and (request.per_try_timeout or request.retry
                                    or request.hash_key is not None):
            stream._start_try(request)  # (a try that only preferred an endpoint has no extras)
        return stream


def _pool_compatible(old: Cluster, new: Cluster) -> bool:
    return (old.protocol == new.protocol and old.tls == new.tls
            and old.max_concurrent_streams == new.max_concurrent_streams)


def _endpoints_only(old: Cluster, new: Cluster) -> bool:
    """Whether `new` differs from `old` in its endpoint list alone."""
    return msgspec.structs.replace(new, endpoints=old.endpoints) == old


def _states(cfg: Cluster, old: ClusterRuntime | None) -> list[EndpointState]:
    """`cfg`'s endpoints as state objects, the surviving ones carried over from `old`.  An
    endpoint joining a cluster that had endpoints is marked `added` now (slow start)."""
    old_eps = {e.key: e for e in old.endpoints} if old is not None else {}
    joined = monotonic() if old_eps else 0.0
    out = []
    for e in cfg.endpoints:
        st = old_eps.get(f"{e.address}:{e.port}")
        if st is None:
            st = EndpointState(e.address, e.port, e.weight, e.zone)
            st.added = joined
        out.append(st)
    return out


def _set_weights(cfg: Cluster, eps: list[EndpointState]) -> None:
    for e, st in zip(cfg.endpoints, eps, strict=True):
        st.weight = e.weight
        st.zone = e.zone


class EndpointUpdate:
    """An endpoint-only change of a kept runtime, applied at commit."""

    __slots__ = ("cfg", "endpoints", "runtime")

    def __init__(self, runtime: ClusterRuntime, cfg: Cluster) -> None:
        self.runtime = runtime
        self.cfg = cfg
        self.endpoints = _states(cfg, runtime)

    def apply(self) -> None:
        rt, eps = self.runtime, self.endpoints
        _set_weights(self.cfg, eps)
        rt.cfg = self.cfg
        rt.endpoints = eps
        rt.lb.set_endpoints(eps)  # the balancer keeps its position
        keys = {e.key for e in eps}
        for key in [k for k in rt.pools if k not in keys]:
            rt.pools.pop(key).close()


class PreparedClusters:
    """A snapshot's cluster runtimes, built but not in force (`ClusterManager.prepare`)."""

    __slots__ = ("fresh", "kept", "runtimes", "updates", "zone")

    def __init__(self, runtimes: dict[str, ClusterRuntime], fresh: list[ClusterRuntime],
                 updates: list[EndpointUpdate], kept: int, zone: str = "") -> None:
        self.zone = zone
        """The node's zone these runtimes balance for."""
        self.runtimes = runtimes
        """By name.  The very dict in force when every runtime is kept: listener contexts
        holding it stay valid."""
        self.fresh = fresh
        """Runtimes built anew (new clusters, changed settings)."""
        self.updates = updates
        """Kept runtimes whose endpoint list changes at commit."""
        self.kept = kept
        """Runtimes kept unchanged."""


class ClusterManager:
    """Owns every cluster's runtime across snapshots.

    A swap is two steps so that the server can build everything before changing anything:
    `prepare` builds what changed (reusing runtimes, endpoint state and pools, touching nothing
    in force), `commit` puts it in force and winds down what was not carried over.
    """

    def __init__(self, metrics: ProxyMetrics, tls: TLSContexts | None = None) -> None:
        self.metrics = metrics
        self.tls = tls if tls is not None else TLSContexts()
        self.clusters: dict[str, ClusterRuntime] = {}
        self.on_outcome: OutcomeHook | None = None
        self.zone = ""
        """The node's zone the runtimes in force were built for (locality-aware balancing)."""

    def subscribe(self, hook: OutcomeHook | None) -> None:
        """Have `hook` told every try's outcome, on every cluster, now and after swaps (one
        subscriber: outlier detection; None unsubscribes)."""
        self.on_outcome = hook
        for rt in self.clusters.values():
            rt.on_outcome = hook

    def prepare(self, clusters: Iterable[Cluster], settings: Settings,
                zone: str = "") -> PreparedClusters:
        """Build the runtimes of a snapshot without changing anything in force.

        May raise (e.g. an unreadable client certificate); then nothing has changed.
        """
        current = self.clusters
        skey = _settings_key(settings, zone)
        runtimes: dict[str, ClusterRuntime] = {}
        fresh: list[ClusterRuntime] = []
        updates: list[EndpointUpdate] = []
        kept = 0
        for cfg in clusters:
            old = current.get(cfg.name)
            if old is not None and old.settings_key == skey:
                if old.cfg is cfg or old.cfg == cfg:
                    runtimes[cfg.name] = old
                    kept += 1
                    continue
                if _endpoints_only(old.cfg, cfg):
                    runtimes[cfg.name] = old
                    updates.append(EndpointUpdate(old, cfg))
                    continue
            pools: dict[str, Pool] = {}
            eps = _states(cfg, old)
            if old is not None and _pool_compatible(old.cfg, cfg):
                pools = {e.key: old.pools[e.key] for e in eps if e.key in old.pools}
            rt = ClusterRuntime(cfg, settings, self.metrics, eps, pools, self.tls,
                                limits=old.limits if old is not None else None,
                                on_outcome=self.on_outcome, zone=zone)
            runtimes[cfg.name] = rt
            fresh.append(rt)
        if not fresh and len(runtimes) == len(current):
            runtimes = current  # same runtimes under the same names: the dict in force
        return PreparedClusters(runtimes, fresh, updates, kept, zone)

    def commit(self, prepared: PreparedClusters) -> None:
        """Put prepared runtimes in force; pools that were not carried over wind down."""
        current = self.clusters
        for u in prepared.updates:
            u.apply()
        for rt in prepared.fresh:
            old = current.get(rt.name)
            if old is not None and _pool_compatible(old.cfg, rt.cfg):
                # Pools the old runtime opened after `prepare` ran are carried over too.
                keys = {e.key for e in rt.endpoints}
                for key, pool in old.pools.items():
                    if key in keys:
                        rt.pools.setdefault(key, pool)
            _set_weights(rt.cfg, rt.endpoints)
            rt.lb = build(rt.cfg.lb_policy, rt.endpoints, rt.lb_options)  # weights in force
            rt.limits.configure(rt.cfg.limits)  # a carried-over counter takes the new limits
            rt.limits.budget.configure(rt.cfg.retry_budget)
            rt.on_outcome = self.on_outcome
            for pool in rt.pools.values():
                pool.cluster = rt
        new = prepared.runtimes
        if new is not current:
            for name, old in current.items():
                live = new.get(name)
                if live is old:
                    continue
                for key, pool in old.pools.items():
                    if live is None or live.pools.get(key) is not pool:
                        pool.close()
        self.clusters = new
        self.zone = prepared.zone

    def sweep(self, now: float) -> None:
        for c in self.clusters.values():
            for pool in c.pools.values():
                pool.sweep(now, c.idle_timeout)

    def close(self) -> None:
        for c in self.clusters.values():
            for pool in c.pools.values():
                pool.close()

    def abort(self) -> None:
        for c in self.clusters.values():
            for pool in c.pools.values():
                pool.abort()


def run_sweeper(manager: ClusterManager, interval: float = 1.0) -> asyncio.Task[None]:
    async def loop_() -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            manager.sweep(loop.time())

    return asyncio.get_running_loop().create_task(loop_())
