"""`Mesh.spec` outside `defaults` (trust domain, mTLS mode, outbound traffic policy): what of it
the proxies do, and a condition naming each setting they do not.

- `trustDomain`: in force — workload certificates carry it (ADR 0028) and clients expect it in
  the servers' SPIFFE IDs (`mtls` plugin, ADR 0033);
- `trustDomainAliases`: in force — clients accept them in the servers' SPIFFE IDs, and
  authorization identities match across them (`mtls`, `authorization`, ADR 0087);
- `mtls.mode`: in force, every value — the `mtls` plugin compiles it (ADR 0033);
- `observability.tracing`: in force, every field (ADR 0055, `compiler/telemetry.py`);
- `outboundTrafficPolicy.mode`: in force, both values, on the transparent outbound listener
  (ADR 0044): `ALLOW_ANY` passes an unknown destination through, `REGISTRY_ONLY` refuses it.
  An `interception: explicit` workload's application dials destinations outside the mesh
  itself, which no proxy setting can stop (the message says so).
- `observability.accessLog` / `.flowLog`: in force, every field (`compiler/logs.py`, ADR 0054).

The stored Mesh carries every field (the API fills in the defaults), so these settings are
always reported: the Mesh gets `SettingsApplied`, `False` with reason `UnsupportedValue` and each
setting not in force with why, or `True` when there is none.  `spec.defaults` is
`mesh_defaults`' (its `DefaultsApplied` condition is kept; this one is added after it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from msgspec.structs import replace

from tulle.controlplane.compiler.ir import Condition, MeshModel
from tulle.controlplane.compiler.plugins.base import Plugin

NAME = "mesh_settings"

IN_FORCE_MTLS = ("STRICT", "PERMISSIVE", "DISABLED")
"""The mTLS modes the proxies run (all of them since ADR 0033)."""


def _section(spec: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = spec.get(key)
    return value if isinstance(value, Mapping) else {}


def not_in_force(spec: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(settings in force, settings not in force with why), each `spec.<path> <value>`."""
    applied: list[str] = []
    left_out: list[str] = []
    domain = spec.get("trustDomain")
    if domain is not None:
        applied.append(f"trustDomain {domain}")
    aliases = spec.get("trustDomainAliases")
    if aliases:
        applied.append(f"trustDomainAliases {', '.join(map(str, aliases))}")
    mode = _section(spec, "mtls").get("mode")
    if mode in IN_FORCE_MTLS:
        applied.append(f"mtls.mode {mode}")
    elif mode is not None:
        left_out.append(f"spec.mtls.mode {mode}: not a mode the proxies know")
    outbound = _section(spec, "outboundTrafficPolicy").get("mode")
    if outbound in ("ALLOW_ANY", "REGISTRY_ONLY"):
        applied.append(f"outboundTrafficPolicy.mode {outbound} (transparent workloads; "
                       "explicit ones dial outside the mesh directly)")
    elif outbound is not None:
        left_out.append(f"spec.outboundTrafficPolicy.mode {outbound}: not a mode the proxies "
                        "know")
    tracing = _section(_section(spec, "observability"), "tracing")
    if tracing:  # every field in force (ADR 0055): `compiler/telemetry.py`
        otlp = _section(tracing, "otlp").get("endpoint")
        applied.append(f"observability.tracing (sampling {tracing.get('sampling', 1.0)}%, "
                       f"propagation {','.join(tracing.get('propagation') or ['w3c'])}, "
                       + (f"spans to {otlp})" if otlp else "no span export)"))
    observability = _section(spec, "observability")
    for key in ("accessLog", "flowLog"):  # every field compiled, none only stored (ADR 0054)
        logs = observability.get(key)
        if isinstance(logs, Mapping):
            sink = _section(logs, "sink").get("type", "stdout")
            applied.append(f"observability.{key} (to {sink})")
    return applied, left_out


def apply(mesh: MeshModel) -> MeshModel:
    if mesh.mesh is None:
        return mesh
    applied, left_out = not_in_force(mesh.mesh.spec)
    gen = mesh.mesh.generation
    if applied:
        done = "in force: " + ", ".join(applied)
    else:
        done = "none in force" if left_out else "none set: nothing outside spec.defaults to enforce"
    if left_out:
        cond = Condition("SettingsApplied", False, "UnsupportedValue",
                         f"{done}; not enforced: " + "; ".join(left_out), gen)
    else:
        cond = Condition("SettingsApplied", True, "Applied", done, gen)
    ref = mesh.mesh.ref
    return replace(mesh, conditions={**mesh.conditions,
                                     ref: (*mesh.conditions.get(ref, ()), cond)})


PLUGIN = Plugin(NAME, apply, affects=("conditions",))
