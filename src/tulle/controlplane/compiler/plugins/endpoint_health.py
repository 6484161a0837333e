"""OutlierDetectionPolicy, HealthCheckPolicy and their `Mesh.spec.defaults` -> each Service
cluster's `outlier_detection` and `health_check` (ADR 0037 precedence, ADR 0040 health).

For every Service port, the policies of each kind that apply (targeting the Service, then its
namespace, then the Mesh) and then the Mesh default are merged field by field, most specific
first; what no level sets takes the contract's default (`proxyconfig/health.py`).  A kind no
level sets leaves the cluster without it.  The probe of a health check (`http` / `grpc` /
`tcp`) counts as one field.  Each compiled value keeps who set it: the Service gets an
`EndpointHealth` condition listing them (what `tulle describe service` shows), and each policy
`Accepted=True` / `Enforced` naming the fields it set (or `Overridden`), or `TargetNotFound`.

Ports the settings cannot apply to are left without them and say so in the Service's
condition: outlier detection on a `tcp` port (the TCP relay reports no outcomes yet), an HTTP
or gRPC probe on a `tcp` port, a gRPC probe on a port that is not `http2`.

Precedence is the shared helper's (ADR 0037, `compiler/policies.py`: `layered`,
`merge_fields`): Service, namespace, Mesh; two policies at one level: the oldest
(`creationTimestamp`, then namespace/name) wins a field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from msgspec.structs import replace

from tulle.api.policies import health_check as hc_api
from tulle.api.policies import outlier_detection as od_api
from tulle.controlplane.compiler.durations import to_ms
from tulle.controlplane.compiler.ir import Condition, MeshModel, ObjectRef, ServicePort
from tulle.controlplane.compiler.plugins.base import Plugin
from tulle.controlplane.compiler.policies import DEFAULTS_SOURCE as DEFAULTS
from tulle.controlplane.compiler.policies import field_status, layered, merge_fields
from tulle.controlplane.compiler.policies import source_of as _source

NAME = "endpoint_health"
OD_KIND = "OutlierDetectionPolicy"
HC_KIND = "HealthCheckPolicy"
PROBE = "probe"
"""The merge unit standing for whichever of `http`, `grpc`, `tcp` a level sets."""

Layers = list[tuple[str, Mapping[str, Any]]]


def _probe_view(values: Mapping[str, Any]) -> dict[str, Any]:
    """A health-check layer with its probe folded into one `probe` field."""
    out = {k: v for k, v in values.items() if k not in hc_api.PROBES}
    for kind in hc_api.PROBES:
        if values.get(kind) is not None:
            out[PROBE] = (kind, values[kind])
    return out


def _outlier(merged: Mapping[str, tuple[Any, str]]) -> dict[str, Any]:
    """The contract's `outlier_detection` of merged settings (unset fields: its defaults)."""
    out: dict[str, Any] = {}
    names = {"consecutive5xx": "consecutive_5xx",
             "consecutiveGatewayErrors": "consecutive_gateway_errors",
             "consecutiveLocalOriginFailures": "consecutive_local_origin_failures",
             "maxEjectionPercent": "max_ejection_percent"}
    for f, (v, _) in merged.items():
        if f in names:
            out[names[f]] = int(v)
        elif f in ("interval", "baseEjectionTime", "maxEjectionTime"):
            key = {"interval": "interval_ms", "baseEjectionTime": "base_ejection_time_ms",
                   "maxEjectionTime": "max_ejection_time_ms"}[f]
            out[key] = to_ms(str(v))
        elif f == "successRate":
            out["success_rate"] = {
                "minimum_hosts": int(v.get("minimumHosts", 5)),
                "request_volume": int(v.get("requestVolume", 100)),
                "stdev_factor": round(float(v.get("standardDeviationFactor", 1.9)) * 1000)}
    base = out.get("base_ejection_time_ms", 30_000)
    if out.get("max_ejection_time_ms", 300_000) < base:  # levels disagree: the cap wins up
        out["max_ejection_time_ms"] = base
    return out


def _health_check(merged: Mapping[str, tuple[Any, str]]) -> dict[str, Any] | None:
    if PROBE not in merged:
        return None
    kind, probe = merged[PROBE][0]
    out: dict[str, Any] = {"type": kind}
    if kind == "http":
        out["path"] = probe.get("path", "/")
        if probe.get("expectedStatuses"):
            out["expected_statuses"] = list(probe["expectedStatuses"])
        if probe.get("host"):
            out["authority"] = probe["host"]
    elif kind == "grpc" and probe.get("serviceName"):
        out["grpc_service"] = probe["serviceName"]
    for f, key in (("interval", "interval_ms"), ("timeout", "timeout_ms"),
                   ("jitter", "jitter_ms")):
        if f in merged:
            out[key] = to_ms(str(merged[f][0]))
    for f, key in (("healthyThreshold", "healthy_threshold"),
                   ("unhealthyThreshold", "unhealthy_threshold")):
        if f in merged:
            out[key] = int(merged[f][0])
    if out.get("timeout_ms", 1000) > out.get("interval_ms", 5000):  # levels disagree
        out["timeout_ms"] = out.get("interval_ms", 5000)
    return out


def _unfit(sp: ServicePort, od: dict[str, Any] | None, hc: dict[str, Any] | None) -> list[str]:
    why = []
    if od is not None and sp.protocol == "tcp":
        why.append("outlier detection not applied: a tcp port (the relay reports no outcomes)")
    if hc is not None and hc["type"] != "tcp" and sp.protocol == "tcp":
        why.append(f"{hc['type']} health check not applied: a tcp port")
    elif hc is not None and hc["type"] == "grpc" and sp.protocol != "http2":
        why.append(f"grpc health check not applied: the port speaks {sp.protocol}, not http2")
    return why


def apply(mesh: MeshModel) -> MeshModel:
    kinds = (OD_KIND, HC_KIND)
    policies = [p for p in mesh.policies if p.kind in kinds]
    defaults: Mapping[str, Any] = {}
    if mesh.mesh is not None:
        defaults = mesh.mesh.spec.get("defaults") or {}
    od_default = defaults.get("outlierDetection") or {}
    hc_default = defaults.get("healthCheck") or {}
    if not policies and not od_default and not hc_default:
        return mesh
    conditions: dict[ObjectRef, tuple[Condition, ...]] = dict(mesh.conditions)
    used: dict[ObjectRef, set[str]] = {}
    won: dict[ObjectRef, set[str]] = {}
    by_source = {_source(p): p for p in policies}
    services: list[ServicePort] = []
    described: dict[ObjectRef, list[str]] = {}
    hc_fields = [*(f for f in hc_api.FIELDS if f not in hc_api.PROBES), PROBE]
    for sp in mesh.services:
        applying = [*layered(policies, OD_KIND, sp.key), *layered(policies, HC_KIND, sp.key)]
        od_layers: Layers = [(_source(p), p.spec) for p in applying if p.kind == OD_KIND]
        hc_layers: Layers = [(_source(p), _probe_view(p.spec)) for p in applying
                             if p.kind == HC_KIND]
        if od_default:
            od_layers.append((DEFAULTS, od_default))
        if hc_default:
            hc_layers.append((DEFAULTS, _probe_view(hc_default)))
        od_merged = merge_fields(od_layers, od_api.FIELDS) if od_layers else {}
        hc_merged = merge_fields(hc_layers, hc_fields) if hc_layers else {}
        for p in applying:
            view = p.spec if p.kind == OD_KIND else _probe_view(p.spec)
            fields = od_api.FIELDS if p.kind == OD_KIND else hc_fields
            used.setdefault(p.ref, set()).update(f for f in fields if view.get(f) is not None)
        od = _outlier(od_merged) if od_layers else None
        hc = _health_check(hc_merged)
        unfit = _unfit(sp, od, hc)
        if od is not None and sp.protocol == "tcp":
            od, od_merged = None, {}
        if hc is not None and any(u.startswith(hc["type"]) for u in unfit):
            hc, hc_merged = None, {}
        for merged in (od_merged, hc_merged):
            for f, (_, src) in merged.items():
                if src in by_source:
                    won.setdefault(by_source[src].ref, set()).add(f)
        health: dict[str, Any] = {}
        if od is not None:
            health["outlier_detection"] = od
        if hc is not None:
            health["health_check"] = hc
        services.append(replace(sp, health=health or None))
        parts = [f"{f}={_text(v)} ({src})" for f, (v, src) in
                 [*(("outlierDetection." + f, x) for f, x in od_merged.items()),
                  *(("healthCheck." + f, x) for f, x in hc_merged.items())]]
        if parts or unfit:
            described.setdefault(("Service", sp.namespace, sp.name), []).append(
                f"port {sp.port}: " + "; ".join(parts + unfit))
    generations = {("Service", *k): g for k, g in _service_generations(mesh).items()}
    for ref, texts in described.items():
        conditions[ref] = (*conditions.get(ref, ()), Condition(
            "EndpointHealth", True, "Resolved", " | ".join(texts), generations.get(ref, 1)))
    for p in policies:
        conditions[p.ref] = (field_status(p, used.get(p.ref), won.get(p.ref, set())),)
    return replace(mesh, services=tuple(services), conditions=conditions)


def _text(value: Any) -> str:
    if isinstance(value, tuple):  # a probe: (kind, settings)
        return f"{value[0]} {dict(value[1])}" if value[1] else value[0]
    return str(value)


def _service_generations(mesh: MeshModel) -> dict[tuple[str, str], int]:
    """Services' generations, where the model has them (1 otherwise)."""
    return {sp.key: int(getattr(sp, "generation", 1)) for sp in mesh.services}


PLUGIN = Plugin(NAME, apply, affects=("services", "conditions"))
