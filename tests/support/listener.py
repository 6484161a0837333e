"""A listener's handle made in memory from a validated proxy config, as the server makes one:
its routers, its clusters (prepared and committed), its context and its connection gauges.

Unit tests of a driver (HTTP/1, HTTP/2, detection) feed bytes to a protocol object built on
this handle without a socket; the handle's context reaches everything else
(`handle.ctx.metrics`, `handle.ctx.clusters["name"]`)."""

from __future__ import annotations

from tulle.dataplane.listeners.context import ListenerContext, ListenerHandle
from tulle.dataplane.routing.router import Router
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.upstream.cluster import ClusterManager
from tulle.proxyconfig.model import ProxyConfig


def listener_handle(cfg: ProxyConfig, name: str = "l") -> ListenerHandle:
    """The handle of `cfg`'s first listener, labelled `name` in the metrics."""
    metrics = ProxyMetrics()
    settings = cfg.settings
    routers = {t.name: Router(t, settings.request_timeout_ms) for t in cfg.route_tables}
    manager = ClusterManager(metrics)
    prepared = manager.prepare(cfg.clusters, settings)
    manager.commit(prepared)
    ctx = ListenerContext(cfg.listeners[0], settings, routers, prepared.runtimes, metrics)
    return ListenerHandle(name, ctx, m_active=metrics.connections_active.labels(name),
                          m_total=metrics.connections_total.labels(name))
