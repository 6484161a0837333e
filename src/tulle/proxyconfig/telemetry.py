"""The contract's `telemetry` section: what a proxy observes of its traffic and how.

Why one section with one sub-struct per signal (metrics, access logs, flow logs, tracing,
tap): each is switched and bounded on its own, a proxy that lacks one is sent the others
(features.py withholds by path), and `Mesh.spec.observability` compiles into it one to one.
The section travels whole in a delta when anything in it changed (it is small).

`metrics` turns on the Istio-compatible golden metrics (`istio_requests_total`, ...; ADR
0053).  Absent: the proxy keeps only its own `tulle_proxy_*` families and pays nothing per
request for the golden ones.  The local workload's and the mesh peers' names, apps and versions
travel here because labels name workloads and a proxy knows only addresses and identities.

`access_log` and `flow_log` (`proxyconfig/logs.py`, ADR 0054): one record per HTTP request,
one per relayed TCP connection; absent: off, and nothing is paid for them.  `tracing` (ADR
0055): trace propagation and spans.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from tulle.proxyconfig.logs import AccessLogTelemetry, FlowLogTelemetry
from tulle.proxyconfig.tracing import Tracing
from tulle.proxyconfig.values import Base

Label = Annotated[str, Meta(max_length=253)]


class PeerWorkload(Base, frozen=True, kw_only=True):
    """Who stands behind a mesh identity: the `source_*` labels of the requests a proxy
    serves to callers that presented it (reporter `destination`)."""

    principal: Annotated[str, Meta(min_length=1, max_length=2048)]
    """The SPIFFE ID the caller's certificate carries."""
    workload: Label = "unknown"
    namespace: Label = ""
    """Empty: the namespace of the SPIFFE ID (`/ns/<namespace>/`)."""
    app: Label = ""
    version: Label = ""
    canonical_service: Label = ""
    """Empty: `app`, else `workload`."""
    canonical_revision: Label = ""
    """Empty: `version`, else `latest`."""


class MetricsTelemetry(Base, frozen=True, kw_only=True):
    """The golden metrics: Istio's standard families and labels (ADR 0053)."""

    max_series_per_family: Annotated[int, Meta(ge=1, le=1_000_000)] = 2000
    """Label sets one golden family keeps; observations beyond go to one overflow series
    (every label but `reporter` `overflow`) and are counted in
    `tulle_proxy_metric_overflow_total{family}`."""
    workload: Label = ""
    """The local workload's name in labels; empty: `node.name`."""
    principal: Annotated[str, Meta(max_length=2048)] = ""
    """The local workload's SPIFFE ID (`source_principal` of its requests, `destination_principal`
    of those it serves); empty: `unknown`."""
    app: Label = ""
    version: Label = ""
    canonical_service: Label = ""
    """Empty: `app`, else the workload's name."""
    canonical_revision: Label = ""
    """Empty: `version`, else `latest`."""
    cluster: Label = "unknown"
    """`source_cluster` / `destination_cluster`: the mesh's cluster (Istio's cluster ID)."""
    service_domain: Label = "svc.cluster.local"
    """`destination_service` is `<service>.<namespace>.<service_domain>`."""
    peers: Annotated[list[PeerWorkload], Meta(max_length=100_000)] = msgspec.field(
        default_factory=list)
    """Identities of the mesh's workloads, for the `source_*` labels of inbound requests; an
    identity not listed is labelled by its SPIFFE namespace and workload `unknown`."""


class Telemetry(Base, frozen=True, kw_only=True):
    """What the proxy observes; each signal absent is off."""

    metrics: MetricsTelemetry | None = None
    """The golden metrics (feature `golden-metrics`); null: only `tulle_proxy_*`."""
    tracing: Tracing | None = None
    """Trace propagation and spans (feature `tracing`, ADR 0055); null: no tracing at all."""
    access_log: AccessLogTelemetry | None = None
    """One record per HTTP request (feature `access-log`); null: none."""
    flow_log: FlowLogTelemetry | None = None
    """One record per relayed TCP connection (feature `flow-logs`); null: none."""
    principal: Annotated[str, Meta(max_length=2048)] = ""
    """The proxy's own workload identity (SPIFFE ID) for the records that name both sides
    (the source of its outbound requests, the destination of its inbound ones); empty:
    unnamed."""


__all__ = ["MetricsTelemetry", "PeerWorkload", "Telemetry"]
