"""`Mesh.spec.defaults` -> the values every proxy gets where nothing more specific applies.

- `requestTimeout` -> `settings.request_timeout_ms`: the proxy applies it to every rule that has
  no timeout of its own (a route's `timeouts.request`, `route_timeouts`), `0s` disables;
- `idleTimeout` -> `settings.idle_timeout_ms`: idle downstream keep-alive connections;
- `drainPropagation` -> `settings.drain_propagation_ms`: how long a stopping sidecar keeps
  accepting after `Draining` (ADR 0113; its own default, when unset, is 1 s);
- `connectTimeout` -> `connect_timeout_ms` of every Service cluster (must be 1 ms .. 10 min).

A value equal to the proxy's own default is not rendered, so a Mesh with the documented
defaults changes no snapshot.  What the proxies cannot enforce is never accepted silently: the
Mesh gets a `DefaultsApplied` condition, `False` with reason `UnsupportedValue` naming each
setting left out (a value out of the proxy's range).  `retryBudget` is rendered on every
Service cluster by the `retries` plugin (a RetryPolicy's `budget` takes precedence).  The
Mesh's other settings (mTLS, outbound traffic policy) are not this plugin's.
"""

from __future__ import annotations

from typing import Any

from msgspec.structs import replace

from tulle.controlplane.compiler.durations import to_ms
from tulle.controlplane.compiler.ir import Condition, MeshModel
from tulle.controlplane.compiler.plugins.base import Plugin
from tulle.proxyconfig.model import Cluster, Settings
from tulle.proxyconfig.settings import SUBSCRIBED_DRAIN_PROPAGATION_MS

NAME = "mesh_defaults"

_SETTINGS = Settings()
_CLUSTER = Cluster(name="x")
FIELDS: tuple[tuple[str, str, int, int, int], ...] = (
    ("requestTimeout", "request_timeout_ms", 0, 86_400_000, _SETTINGS.request_timeout_ms),
    ("idleTimeout", "idle_timeout_ms", 0, 86_400_000, _SETTINGS.idle_timeout_ms),
    ("connectTimeout", "connect_timeout_ms", 1, 600_000, _CLUSTER.connect_timeout_ms),
    ("drainPropagation", "drain_propagation_ms", 0, 600_000,
     SUBSCRIBED_DRAIN_PROPAGATION_MS),
)
"""Mesh field, `ProxyDefaults` field, the proxy's range (ms) and its own default."""


def _read(defaults: dict[str, Any]) -> tuple[dict[str, int], list[str], list[str]]:
    values: dict[str, int] = {}
    applied: list[str] = []
    left_out: list[str] = []
    for user, ours, lo, hi, proxy_default in FIELDS:
        text = defaults.get(user)
        if text is None:
            continue
        try:
            ms = to_ms(str(text))
        except ValueError as exc:
            left_out.append(f"spec.defaults.{user}: {exc}")
            continue
        if not lo <= ms <= hi:
            left_out.append(f"spec.defaults.{user}: {text} is outside what the proxy takes "
                            f"({lo} ms .. {hi} ms)")
            continue
        applied.append(f"{user} {text}")
        if ms != proxy_default:
            values[ours] = ms
    if defaults.get("loadBalancing"):  # enforced by the load_balancing plugin (ADR 0038)
        applied.append("loadBalancing (each Service's LoadBalancing condition shows its values)")
    if defaults.get("retryBudget") is not None:
        applied.append("retryBudget")  # (rendered on each Service cluster by `retries`)
    if defaults.get("retry") is not None:
        applied.append("retry")  # (every rule nothing more specific sets, by `retries`)
    return values, applied, left_out


def apply(mesh: MeshModel) -> MeshModel:
    if mesh.mesh is None:
        return mesh
    values, applied, left_out = _read(dict(mesh.mesh.spec.get("defaults") or {}))
    gen = mesh.mesh.generation
    done = ("applied to every proxy: " + ", ".join(applied) if applied
            else "none set: the proxies' own defaults apply")
    if left_out:
        cond = Condition("DefaultsApplied", False, "UnsupportedValue",
                         f"{done}; left out: " + "; ".join(left_out), gen)
    else:
        cond = Condition("DefaultsApplied", True, "Applied", done, gen)
    return replace(mesh, defaults=replace(mesh.defaults, **values),
                   conditions={**mesh.conditions, mesh.mesh.ref: (cond,)})


PLUGIN = Plugin(NAME, apply, affects=("defaults", "conditions"))
