"""Clusters at run time: endpoints, a load balancer, and a pool per endpoint.

`ClusterManager.prepare` turns a snapshot's clusters into `ClusterRuntime`s and `commit` puts
them in force.  A cluster whose name survives a swap keeps its endpoint state, and its pools for
endpoints that are still there (when protocol, TLS and stream limits are unchanged)
(decision 3 of DESIGN.md: in-flight requests finish on the connections they have; nothing is
re-dialled because an unrelated route changed).  Pools of removed endpoints stop taking new
requests and close as their last exchange ends.

Pools are chosen by the cluster's protocol through `POOL_FACTORIES`, so the HTTP/2 pool plugs
in beside the HTTP/1 one.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterable
from typing import Protocol

from tulle.dataplane.exchange import RequestHead, ResponseSink, UpstreamStream
from tulle.dataplane.protocols.http1 import H1Limits
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.upstream.lb import EndpointState, LoadBalancer, build
from tulle.proxyconfig.model import Cluster, Settings


class Pool(Protocol):
    cluster: ClusterRuntime
    """The runtime of the snapshot in force; `ClusterManager.commit` moves it on a swap."""

    def open_stream(self, head: RequestHead, sink: ResponseSink,
                    end_stream: bool) -> UpstreamStream: ...

    def sweep(self, now: float, idle_timeout: float) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


PoolFactory = Callable[["ClusterRuntime", EndpointState], Pool]


def _h1_pool(cluster: ClusterRuntime, ep: EndpointState) -> Pool:
    from tulle.dataplane.upstream.http1 import H1Pool

    return H1Pool(cluster, ep)


def _h2_pool(cluster: ClusterRuntime, ep: EndpointState) -> Pool:
    from tulle.dataplane.upstream.http2 import H2Pool

    return H2Pool(cluster, ep)


POOL_FACTORIES: dict[str, PoolFactory] = {"http1": _h1_pool, "http2": _h2_pool}
"""Upstream protocol -> pool constructor.  `tcp` clusters have no pool (the relay dials)."""


def client_ssl_context(cfg: Cluster) -> ssl.SSLContext | None:
    tls = cfg.tls
    if tls is None:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca_file:
        ctx.load_verify_locations(tls.ca_file)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file:
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
    alpn = list(tls.alpn) or (["h2"] if cfg.protocol == "http2" else ["http/1.1"])
    ctx.set_alpn_protocols(alpn)
    return ctx


class ClusterRuntime:
    """One cluster of one snapshot.  Everything a request needs is an attribute lookup away."""

    def __init__(self, cfg: Cluster, settings: Settings, metrics: ProxyMetrics,
                 endpoints: list[EndpointState], pools: dict[str, Pool]) -> None:
        self.cfg = cfg
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
        self.ssl_context = client_ssl_context(cfg)
        self.sni = cfg.tls.server_name if cfg.tls else ""
        self.endpoints = endpoints
        self.lb: LoadBalancer = build(cfg.lb_policy, endpoints)
        self.pools = pools
        self.m_connect_failures = metrics.upstream_connect_failures.labels(cfg.name)
        self.m_connections_active = metrics.upstream_connections_active.labels(cfg.name)
        self.m_connections_total = metrics.upstream_connections_total.labels(cfg.name)
        self._factory = POOL_FACTORIES.get(cfg.protocol)

    def pick(self, key: int | None = None) -> EndpointState | None:
        return self.lb.pick(key)

    def pool_for(self, ep: EndpointState) -> Pool:
        pool = self.pools.get(ep.key)
        if pool is None:
            if self._factory is None:
                raise RuntimeError(f"cluster {self.name} ({self.protocol}) has no request pool")
            pool = self.pools[ep.key] = self._factory(self, ep)
        return pool

    def open_stream(self, head: RequestHead, sink: ResponseSink,
                    end_stream: bool) -> UpstreamStream | None:
        """Open an exchange on the next endpoint; None when the cluster has no usable one."""
        ep = self.lb.pick(None)
        if ep is None:
            return None
        return self.pool_for(ep).open_stream(head, sink, end_stream)


def _pool_compatible(old: Cluster, new: Cluster) -> bool:
    return (old.protocol == new.protocol and old.tls == new.tls
            and old.max_concurrent_streams == new.max_concurrent_streams)


class ClusterManager:
    """Owns every cluster's runtime across snapshots.

    A swap is two steps so that the server can build everything before changing anything:
    `prepare` builds the new runtimes (reusing endpoint state and pools, touching nothing in
    force), `commit` puts them in force and winds down what was not carried over.
    """

    def __init__(self, metrics: ProxyMetrics) -> None:
        self.metrics = metrics
        self.clusters: dict[str, ClusterRuntime] = {}

    def prepare(self, clusters: Iterable[Cluster],
                settings: Settings) -> dict[str, ClusterRuntime]:
        """Build the runtimes of a snapshot without changing anything in force.

        May raise (e.g. an unreadable client certificate); then nothing has changed.
        """
        new: dict[str, ClusterRuntime] = {}
        for cfg in clusters:
            old = self.clusters.get(cfg.name)
            eps: list[EndpointState] = []
            pools: dict[str, Pool] = {}
            old_eps = {e.key: e for e in old.endpoints} if old else {}
            keep_pools = old is not None and _pool_compatible(old.cfg, cfg)
            for e in cfg.endpoints:
                key = f"{e.address}:{e.port}"
                st = old_eps.get(key) or EndpointState(e.address, e.port, e.weight, e.zone)
                eps.append(st)
                if keep_pools and old is not None and key in old.pools:
                    pools[key] = old.pools[key]
            new[cfg.name] = ClusterRuntime(cfg, settings, self.metrics, eps, pools)
        return new

    def commit(self, new: dict[str, ClusterRuntime]) -> None:
        """Put prepared runtimes in force; pools that were not carried over wind down."""
        for rt in new.values():
            old = self.clusters.get(rt.name)
            keys = {e.key for e in rt.endpoints}
            if old is not None and _pool_compatible(old.cfg, rt.cfg):
                # Pools the old runtime opened after `prepare` ran are carried over too.
                for key, pool in old.pools.items():
                    if key in keys:
                        rt.pools.setdefault(key, pool)
            by_key = {e.key: e for e in rt.endpoints}
            for e in rt.cfg.endpoints:
                st = by_key[f"{e.address}:{e.port}"]
                st.weight = e.weight
                st.zone = e.zone
            rt.lb = build(rt.cfg.lb_policy, rt.endpoints)  # after the weights are in force
            for pool in rt.pools.values():
                pool.cluster = rt
        for name, old in self.clusters.items():
            live = new.get(name)
            for key, pool in old.pools.items():
                if live is None or live.pools.get(key) is not pool:
                    pool.close()
        self.clusters = new

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
