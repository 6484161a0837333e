"""`Mesh.spec.observability` -> each proxy's `telemetry` section (ADR 0053).

Why the control plane fills in names: the golden metrics label requests with workloads, apps
and versions, and a proxy knows only addresses and verified identities.  The compiler knows
both: it gives each proxy its own workload's name, labels and SPIFFE ID, and the mesh's table
of identities -> workloads (`peers`), from which the server's proxy names the caller of an
inbound request (Istio learns the same through its metadata exchange).  An identity shared by
several workloads (one service account for many) names no single workload: it is left out, and
such callers are labelled by their SPIFFE namespace with workload `unknown`.

Pure and deterministic like the rest of the compiler: the peers are built once per compilation,
sorted, and shared by every proxy's section; a digest of them enters each proxy's version.
`tracing` (ADR 0055) is mesh-wide too: the same struct in every proxy's section.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from tulle.controlplane.compiler.ir import MeshModel, Proxy
from tulle.controlplane.compiler.plugins.mtls import spiffe_id, spiffe_ids, trust_domains
from tulle.proxyconfig.telemetry import MetricsTelemetry, PeerWorkload, Telemetry
from tulle.proxyconfig.tracing import Tracing

MAX_PEERS = 100_000
"""The contract's bound on `telemetry.metrics.peers`; a bigger mesh's rest is `unknown`."""


@dataclass(frozen=True)
class MeshTelemetry:
    """What every proxy's `telemetry` section shares, built once per compilation."""

    enabled: bool
    max_series: int = 2000
    cluster: str = "unknown"
    trust_domain: str = ""
    peers: list[PeerWorkload] = field(default_factory=list)
    """One list, the same object in every proxy's section (never mutated)."""
    digest: bytes = b""
    tracing: Tracing | None = None
    """The mesh's tracing (ADR 0055); None: off."""


def _metrics_spec(mesh: MeshModel) -> Mapping[str, Any]:
    spec = mesh.mesh.spec if mesh.mesh is not None else {}
    obs = spec.get("observability") if isinstance(spec, Mapping) else None
    metrics = obs.get("metrics") if isinstance(obs, Mapping) else None
    return metrics if isinstance(metrics, Mapping) else {}


def _section(spec: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = spec.get(key)
    return value if isinstance(value, Mapping) else None


def tracing(spec: Mapping[str, Any]) -> Tracing | None:
    """The contract's tracing of a Mesh spec (validated by `api.mesh`); None when unset."""
    obs = _section(spec, "observability")
    t = _section(obs, "tracing") if obs is not None else None
    if t is None:
        return None
    otlp = _section(t, "otlp")
    return msgspec.convert({
        "sampling_percent": float(t.get("sampling", 1.0)),
        "propagation": list(t.get("propagation") or ["w3c"]),
        "otlp_endpoint": str(otlp.get("endpoint", "")) if otlp is not None else "",
        "service_name": str(t.get("serviceName", "")),
    }, Tracing)


def mesh_telemetry(mesh: MeshModel) -> MeshTelemetry:
    m = _metrics_spec(mesh)
    spec = mesh.mesh.spec if mesh.mesh is not None else {}
    traced = tracing(spec if isinstance(spec, Mapping) else {})
    if m.get("enabled", True) is False:
        return MeshTelemetry(enabled=False, digest=b"off", tracing=traced)
    tds = trust_domains(mesh)  # a caller whose certificate names an alias is the same one
    by_principal: dict[str, list[Proxy]] = {}
    for p in mesh.proxies:
        for principal in spiffe_ids(tds, p.key[0], p.service_account):
            by_principal.setdefault(principal, []).append(p)
    peers: list[PeerWorkload] = []
    for principal in sorted(by_principal):
        owners = by_principal[principal]
        if len(owners) != 1 or len(peers) >= MAX_PEERS:
            continue
        p = owners[0]
        labels = dict(p.metadata.labels)
        peers.append(PeerWorkload(principal=principal, workload=p.key[1],
                                  namespace=p.key[0], app=labels.get("app", ""),
                                  version=labels.get("version", "")))
    max_series = int(m.get("maxSeriesPerFamily", 2000))
    cluster = str(m.get("clusterName", "unknown"))
    td = tds[0]
    domains: str | tuple[str, ...] = tds if len(tds) > 1 else td  # (no aliases: as before)
    digest = hashlib.sha256(msgspec.json.encode([max_series, cluster, domains, peers])).digest()
    return MeshTelemetry(True, max_series, cluster, td, peers, digest, traced)


def telemetry_section(proxy: Proxy, shared: MeshTelemetry) -> Telemetry:
    """The proxy's `telemetry` section: its golden metrics unless the mesh turned them off,
    and the mesh's tracing when set."""
    if not shared.enabled:
        return Telemetry(tracing=shared.tracing)
    labels = dict(proxy.metadata.labels)
    return Telemetry(metrics=MetricsTelemetry(
        max_series_per_family=shared.max_series, workload=proxy.key[1],
        principal=spiffe_id(shared.trust_domain, proxy.key[0], proxy.service_account),
        app=labels.get("app", ""), version=labels.get("version", ""), cluster=shared.cluster,
        peers=shared.peers), tracing=shared.tracing)


__all__ = ["MeshTelemetry", "mesh_telemetry", "telemetry_section", "tracing"]
