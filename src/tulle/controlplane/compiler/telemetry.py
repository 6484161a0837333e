"""`Mesh.spec.observability` → the contract's `telemetry` section, the same for every proxy.

Why a module of its own: the section is mesh-wide (no policy attaches to part of the mesh
yet), so it is computed once per compilation and handed to every proxy with the shared
artefacts (`compiler.Shared`).  `tracing` is ADR 0055's; the other parts belong to their own
owners and land beside it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from tulle.controlplane.compiler.ir import MeshModel
from tulle.proxyconfig.telemetry import Telemetry
from tulle.proxyconfig.tracing import Tracing

_EMPTY = Telemetry()


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


def telemetry_section(mesh: MeshModel) -> Telemetry:
    """What every proxy of `mesh` reports (`ProxyConfig.telemetry`)."""
    spec = mesh.mesh.spec if mesh.mesh is not None else {}
    t = tracing(spec)
    return _EMPTY if t is None else Telemetry(tracing=t)
