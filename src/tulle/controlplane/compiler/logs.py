"""`Mesh.spec.observability.accessLog` / `.flowLog` -> every proxy's `telemetry.access_log` /
`telemetry.flow_log` (ADR 0054).

One to one: the same settings for every proxy of the mesh, built once per compilation (the
Mesh was validated on apply, so every value is in range); durations become milliseconds.  A
digest of both enters each proxy's version, so a change reaches every proxy as a new snapshot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from tulle.controlplane.compiler.durations import to_ms
from tulle.controlplane.compiler.ir import MeshModel, Proxy
from tulle.controlplane.compiler.plugins.mtls import spiffe_id, trust_domain
from tulle.proxyconfig.logs import (
    DEFAULT_ACCESS_FORMAT,
    DEFAULT_FLOW_FORMAT,
    AccessLogTelemetry,
    FlowLogTelemetry,
    LogFilter,
    LogSink,
)


@dataclass(frozen=True)
class MeshLogs:
    access: AccessLogTelemetry | None = None
    flow: FlowLogTelemetry | None = None
    digest: bytes = b""
    """Empty when both are off (then proxies' versions are what they were without logs)."""
    trust_domain: str = ""
    """For each proxy's own SPIFFE ID (`telemetry.principal`), set only when a log is on."""


def _observability(mesh: MeshModel) -> Mapping[str, Any]:
    spec = mesh.mesh.spec if mesh.mesh is not None else {}
    obs = spec.get("observability") if isinstance(spec, Mapping) else None
    return obs if isinstance(obs, Mapping) else {}


def _sink(raw: Mapping[str, Any]) -> LogSink:
    return LogSink(kind=raw.get("type", "stdout"), path=raw.get("path", ""),
                   endpoint=raw.get("endpoint", ""),
                   queue_size=int(raw.get("queueSize", 10_000)),
                   flush_interval_ms=to_ms(raw.get("flushInterval", "1s")))


def mesh_logs(mesh: MeshModel) -> MeshLogs:
    obs = _observability(mesh)
    a, f = obs.get("accessLog"), obs.get("flowLog")
    access = flow = None
    if isinstance(a, Mapping):
        filt = a.get("filter") or {}
        access = AccessLogTelemetry(
            format=a.get("format", "json"), text_format=a.get("textFormat", DEFAULT_ACCESS_FORMAT),
            sink=_sink(a.get("sink") or {}), sample_percent=float(a.get("samplePercent", 100.0)),
            filter=LogFilter(status_min=int(filt.get("statusMin", 0)),
                             duration_min_ms=to_ms(filt.get("durationMin", "0s")),
                             errors_only=bool(filt.get("errorsOnly", False))))
    if isinstance(f, Mapping):
        flow = FlowLogTelemetry(
            format=f.get("format", "json"), text_format=f.get("textFormat", DEFAULT_FLOW_FORMAT),
            sink=_sink(f.get("sink") or {}), interval_ms=to_ms(f.get("interval", "60s")))
    if access is None and flow is None:
        return MeshLogs()
    return MeshLogs(access, flow, hashlib.sha256(msgspec.json.encode([access, flow])).digest(),
                    trust_domain(mesh))


def principal(proxy: Proxy, logs: MeshLogs) -> str:
    """The proxy's own SPIFFE ID when a log is on (the records name both sides), else ""."""
    if not logs.digest:
        return ""
    return spiffe_id(logs.trust_domain, proxy.key[0], proxy.service_account)


__all__ = ["MeshLogs", "mesh_logs", "principal"]
