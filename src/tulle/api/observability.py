"""`Mesh.spec.observability`: what every proxy of the mesh observes, one sub-model per signal.

Why on the Mesh: the golden metrics are what dashboards read across the whole mesh, so they are
switched and bounded in one place (Istio's Telemetry API at the root namespace plays the same
role).  Each signal compiles into its own struct of the proxy contract's `telemetry` section
(`proxyconfig/telemetry.py`); every field here is enforced by the proxies, none is only stored.
Access and flow logs: `api/logs.py` (ADR 0054).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from tulle.api.logs import AccessLogSettings, FlowLogSettings
from tulle.api.meta import Model
from tulle.api.observability_tap import TapSettings
from tulle.api.observability_tracing import TracingSettings

ClusterName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9._-]+$")]


class MetricsSettings(Model):
    """The golden metrics: Istio's standard families and labels (ADR 0053)."""

    enabled: bool = True
    """false: proxies keep only their own `tulle_proxy_*` families (and pay nothing per request
    for the golden ones)."""
    maxSeriesPerFamily: Annotated[int, Field(ge=1, le=1_000_000)] = 2000
    """Label sets one golden family keeps per proxy; beyond, one `overflow` series and
    `tulle_proxy_metric_overflow_total{family}`."""
    clusterName: ClusterName = "unknown"
    """`source_cluster` / `destination_cluster` (Istio's cluster ID)."""


class Observability(Model):
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    tap: TapSettings = Field(default_factory=TapSettings)
    """Live tap (`tulle tap`, `tulle top`, the dashboard; ADR 0056)."""
    tracing: TracingSettings | None = None
    """W3C/B3 trace propagation and spans over OTLP (ADR 0055); unset: no tracing."""
    accessLog: AccessLogSettings | None = None
    """One record per HTTP request (ADR 0054; unset: none)."""
    flowLog: FlowLogSettings | None = None
    """One record per relayed TCP connection (ADR 0054; unset: none)."""


__all__ = ["MetricsSettings", "Observability"]
