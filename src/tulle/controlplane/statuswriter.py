"""The compiler's conditions, put into each kind's status shape, as the reconciler writes them.

The compiler says *which* conditions a resource has (`compiler/status.py`, a flat list per
resource); this module says *where they go and how they age*:

- a route (HTTPRoute, GRPCRoute, TCPRoute) reports as Gateway API does: `status.parents[]`,
  one entry per `spec.parentRefs[i]`, each with the `parentRef` as stored, our
  `controllerName` and its conditions.  A condition dict carrying `"parent": i` belongs to
  parent `i` only; one without applies to every parent.  Entries of other controllers are
  kept (the spec forbids removing them); a top-level `status.conditions` of older Tulle
  versions is dropped.
- every other kind keeps `status.conditions`; the rest of its status (a Service's
  `virtualIP`) is untouched.
- `lastTransitionTime` is kept when a condition of the same type had the same status before
  (Kubernetes' `meta.SetStatusCondition`), so re-compiling does not rewrite an object whose
  state did not change, and `tulle describe` shows since when a route has been broken.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tulle.api.gateway.common import CONTROLLER_NAME

ROUTE_KINDS = frozenset({"HTTPRoute", "GRPCRoute", "TCPRoute"})


def merged(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]],
           now: str) -> list[dict[str, Any]]:
    """`new` conditions with `lastTransitionTime` carried over where the status did not change."""
    before = {str(c.get("type")): c for c in old}
    out: list[dict[str, Any]] = []
    for c in new:
        cond = {k: v for k, v in c.items() if k not in ("parent", "lastTransitionTime")}
        prev = before.get(str(cond.get("type")))
        same = prev is not None and prev.get("status") == cond.get("status")
        cond["lastTransitionTime"] = prev.get("lastTransitionTime", now) if same and prev else now
        out.append(cond)
    return out


def _for_parent(conds: Sequence[Mapping[str, Any]], i: int) -> list[Mapping[str, Any]]:
    return [c for c in conds if c.get("parent", i) == i]


def desired_status(obj: Mapping[str, Any], conds: Sequence[Mapping[str, Any]],
                   now: str) -> dict[str, Any]:
    """The status `obj` should have, given the compiler's `conds` for it (RFC 3339 `now`)."""
    status = dict(obj.get("status") or {})
    if obj.get("kind") not in ROUTE_KINDS:
        status["conditions"] = merged(status.get("conditions") or [], conds, now)
        return status
    status.pop("conditions", None)
    old = status.get("parents") or []
    ours = [p for p in old if p.get("controllerName") == CONTROLLER_NAME]
    others = [p for p in old if p.get("controllerName") != CONTROLLER_NAME]
    parents: list[dict[str, Any]] = []
    for i, ref in enumerate((obj.get("spec") or {}).get("parentRefs") or []):
        mine = _for_parent(conds, i)
        if not mine:
            continue
        prev: Mapping[str, Any] = next((p for p in ours if p.get("parentRef") == ref), {})
        parents.append({"parentRef": ref, "controllerName": CONTROLLER_NAME,
                        "conditions": merged(prev.get("conditions") or [], mine, now)})
    status["parents"] = parents + others
    return status


__all__ = ["ROUTE_KINDS", "desired_status", "merged"]
