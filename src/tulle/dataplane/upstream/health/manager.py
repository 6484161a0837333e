"""Endpoint health for the clusters in force: the asyncio side of ADR 0040.

`HealthManager.sync` runs after every snapshot commit (`ProxyServer._commit`).  It keeps one
`ClusterHealth` per cluster that has `outlier_detection` or `health_check`, carried over by
cluster name and its endpoints' health by `address:port` (DESIGN.md decision 3: health state
survives swaps), subscribes to the attempt layer's outcomes (`ClusterManager.subscribe`) while
any cluster detects outliers, runs each cluster's interval timer and one probe task per
endpoint.  A cluster that drops both settings gets its endpoints back to healthy.

Metrics: `tulle_proxy_upstream_ejections_total{cluster, reason}`,
`tulle_proxy_upstream_health_checks_total{cluster, result}`,
`tulle_proxy_upstream_endpoint_healthy{cluster, endpoint}` (1 in rotation, 0 out).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.upstream.cluster import ClusterManager, ClusterRuntime
from tulle.dataplane.upstream.health.outlier import EndpointHealth, OutlierDetector
from tulle.dataplane.upstream.health.probe import probe
from tulle.dataplane.upstream.lb import EndpointState
from tulle.proxyconfig.health import HealthCheck, OutlierDetection

log = logging.getLogger("tulle.proxy.health")


class ClusterHealth:
    """One cluster's endpoint health across snapshots."""

    def __init__(self, manager: HealthManager, name: str) -> None:
        self.manager = manager
        self.name = name
        self.endpoints: dict[str, EndpointHealth] = {}
        self.outlier: OutlierDetector | None = None
        self.check: HealthCheck | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.probes: dict[str, asyncio.Task[None]] = {}

    def sync(self, rt: ClusterRuntime) -> None:
        eps = {e.key: e for e in rt.endpoints}
        for key in [k for k in self.endpoints if k not in eps]:
            del self.endpoints[key]
            self.manager.m_healthy.children.pop((self.name, key), None)
        for key, ep in eps.items():
            eh = self.endpoints.get(key)
            if eh is None:
                eh = self.endpoints[key] = EndpointHealth(ep)
            eh.ep = ep
            eh.apply()
            self.manager.m_healthy.labels(self.name, key).value = 1 if eh.healthy else 0
        self._sync_outlier(rt.cfg.outlier_detection)
        self._sync_checks(rt, rt.cfg.health_check)

    def _sync_outlier(self, cfg: OutlierDetection | None) -> None:
        if cfg is None:
            self.outlier = None
            for eh in self.endpoints.values():
                if eh.ejected:
                    eh.ejected = False
                    eh.apply()
            self._stop_timer()
            return
        if self.outlier is None or self.outlier.cfg != cfg:
            old_interval = self.outlier.cfg.interval_ms if self.outlier is not None else 0
            self.outlier = OutlierDetector(cfg, self.manager.on_change(self))
            if old_interval != cfg.interval_ms:
                self._stop_timer()
        self.outlier.endpoints = list(self.endpoints.values())
        if self.timer is None:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(cfg.interval_ms / 1000, self._tick)

    def _tick(self) -> None:
        self.timer = None
        outlier = self.outlier
        if outlier is None:
            return
        loop = asyncio.get_running_loop()
        outlier.tick(loop.time())
        self.timer = loop.call_later(outlier.cfg.interval_ms / 1000, self._tick)

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _sync_checks(self, rt: ClusterRuntime, hc: HealthCheck | None) -> None:
        if hc != self.check:
            self._stop_probes()
            for eh in self.endpoints.values():
                eh.check_ok, eh.check_passes, eh.check_fails = True, 0, 0
                eh.apply()
            self.check = hc
        if hc is None:
            return
        for key in [k for k in self.probes if k not in self.endpoints]:
            self.probes.pop(key).cancel()
        loop = asyncio.get_running_loop()
        for key, eh in self.endpoints.items():
            if key not in self.probes:
                self.probes[key] = loop.create_task(self._probe_loop(eh, hc))

    def _stop_probes(self) -> None:
        for t in self.probes.values():
            t.cancel()
        self.probes.clear()

    async def _probe_loop(self, eh: EndpointHealth, hc: HealthCheck) -> None:
        rng = self.manager.rng
        await asyncio.sleep(rng.uniform(0, hc.jitter_ms / 1000))
        while True:
            rt = self.manager.clusters.clusters.get(self.name)
            if rt is None:
                return
            try:
                failure = await probe(rt, eh.ep, hc)
            except Exception as exc:
                failure = f"probe error: {exc!r}"
            self.record_probe(eh, hc, failure)
            await asyncio.sleep(hc.interval_ms / 1000 + rng.uniform(0, hc.jitter_ms / 1000))

    def record_probe(self, eh: EndpointHealth, hc: HealthCheck, failure: str) -> None:
        self.manager.m_checks.labels(self.name, "failure" if failure else "success").value += 1
        was = eh.healthy
        if failure:
            eh.check_fails += 1
            eh.check_passes = 0
            if eh.check_ok and eh.check_fails >= hc.unhealthy_threshold:
                eh.check_ok = False
                log.warning("cluster %s endpoint %s failed %d health checks: %s", self.name,
                            eh.ep.key, eh.check_fails, failure)
        else:
            eh.check_passes += 1
            eh.check_fails = 0
            if not eh.check_ok and eh.check_passes >= hc.healthy_threshold:
                eh.check_ok = True
        if eh.healthy != was:
            eh.apply()
            self.manager.m_healthy.labels(self.name, eh.ep.key).value = 1 if eh.healthy else 0

    def close(self) -> None:
        self._stop_timer()
        self._stop_probes()
        for eh in self.endpoints.values():
            eh.ejected, eh.check_ok = False, True
            eh.apply()
            self.manager.m_healthy.children.pop((self.name, eh.ep.key), None)


class HealthManager:
    """Every cluster's endpoint health, on the proxy's loop."""

    def __init__(self, clusters: ClusterManager, metrics: ProxyMetrics,
                 rng: random.Random | None = None) -> None:
        self.clusters = clusters
        self.rng = rng or random.Random()
        self.by_cluster: dict[str, ClusterHealth] = {}
        self._by_endpoint: dict[EndpointState, tuple[OutlierDetector, EndpointHealth]] = {}
        r = metrics.registry
        self.m_ejections = r.counter("tulle_proxy_upstream_ejections_total",
                                     "Endpoints ejected by outlier detection",
                                     ("cluster", "reason"))
        self.m_checks = r.counter("tulle_proxy_upstream_health_checks_total",
                                  "Active health check probes by result", ("cluster", "result"))
        self.m_healthy = r.gauge("tulle_proxy_upstream_endpoint_healthy",
                                 "1 while an endpoint is in rotation, 0 while out",
                                 ("cluster", "endpoint"))

    def sync(self) -> None:
        """Follow the clusters now in force (after each commit)."""
        runtimes = self.clusters.clusters
        for name in [n for n in self.by_cluster if n not in runtimes
                     or (runtimes[n].cfg.outlier_detection is None
                         and runtimes[n].cfg.health_check is None)]:
            self.by_cluster.pop(name).close()
        index: dict[EndpointState, tuple[OutlierDetector, EndpointHealth]] = {}
        for name, rt in runtimes.items():
            if rt.cfg.outlier_detection is None and rt.cfg.health_check is None:
                continue
            ch = self.by_cluster.get(name)
            if ch is None:
                ch = self.by_cluster[name] = ClusterHealth(self, name)
            ch.sync(rt)
            if ch.outlier is not None:
                for eh in ch.endpoints.values():
                    index[eh.ep] = (ch.outlier, eh)
        self._by_endpoint = index
        self.clusters.subscribe(self._on_outcome if index else None)

    def _on_outcome(self, ep: EndpointState, status: int, flag: str, seconds: float) -> None:
        hit = self._by_endpoint.get(ep)
        if hit is not None:
            hit[0].record(hit[1], status, flag, asyncio.get_running_loop().time())

    def on_change(self, ch: ClusterHealth) -> Callable[[EndpointHealth, str], None]:
        def changed(eh: EndpointHealth, reason: str) -> None:
            if reason:
                self.m_ejections.labels(ch.name, reason).value += 1
                log.warning("cluster %s endpoint %s ejected (%s) until +%.1fs", ch.name,
                            eh.ep.key, reason, eh.ejected_until - eh.ejected_at)
            self.m_healthy.labels(ch.name, eh.ep.key).value = 1 if eh.healthy else 0
        return changed

    def why(self, cluster: str, key: str) -> str:
        """Why an endpoint is out of rotation ("" when in, or when nothing tracks it)."""
        ch = self.by_cluster.get(cluster)
        eh = ch.endpoints.get(key) if ch is not None else None
        return eh.why(asyncio.get_running_loop().time()) if eh is not None else ""

    def close(self) -> None:
        for ch in self.by_cluster.values():
            ch.close()
        self.by_cluster.clear()
        self._by_endpoint = {}
        self.clusters.subscribe(None)
