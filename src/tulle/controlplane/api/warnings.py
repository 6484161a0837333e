"""Apply's warnings: what a request is about to store that the mesh will not (wholly) enforce.

Kubernetes answers an apply with `Warning:` headers for what it accepted but frowns on; Tulle
does the same with its own truth: before writing, the applied documents are compiled over the
current state (`MeshView.conditions`: the model and plugins only, on apply's worker thread,
`apply_checks.py`), and every condition that reports a problem (`is_problem` of
`tulle.api.conditions`: `Accepted=False`, `ResolvedRefs=False`, `PartiallyInvalid=True`,
`DefaultsApplied=False`...) becomes a warning of its document.  The answer is the same the
reconciler writes into status a moment later, because it is the same compiler on the same
inputs.

Non-fatal by default (the objects are stored, the warnings printed); with `strict` the whole
apply is refused (422) and nothing is written (ADR 0024).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tulle.api.conditions import Found, is_problem, parent_label
from tulle.api.registry import KindInfo
from tulle.controlplane.store.protocol import Obj

Preview = Callable[[list[Obj]], Mapping[tuple[str, str, str], Sequence[Mapping[str, Any]]]]
"""The conditions the given objects would have once applied (`MeshView.conditions`)."""


def _line(obj: Obj, cond: Mapping[str, Any]) -> str:
    parent = cond.get("parent")
    where = ""
    refs = (obj.get("spec") or {}).get("parentRefs") or []
    if isinstance(parent, int) and 0 <= parent < len(refs):
        where = parent_label(refs[parent])
    return Found(where, cond).line()


def warnings(prepared: Sequence[tuple[int, KindInfo, Obj]], preview: Preview) -> dict[int, list[str]]:
    """Per document index, the problems its object would have (documents without any absent)."""
    conds = preview([obj for _, _, obj in prepared])
    out: dict[int, list[str]] = {}
    for i, info, obj in prepared:
        md = obj["metadata"]
        found = conds.get((info.kind, md.get("namespace") or "", md["name"])) or []
        lines = [_line(obj, c) for c in found if is_problem(c)]
        if lines:
            out[i] = lines
    return out


def trust_domain_change(current: Obj | None, obj: Obj) -> str | None:
    """The warning for a Mesh whose `trustDomain` changes while the old one is not among its
    `trustDomainAliases`: every workload certificate names the old one until it is re-issued
    (at renewal, half its lifetime, or `tulle ca rotate`), and clients expect the new one at
    once, so mTLS between the proxies fails meanwhile (ADR 0087)."""
    if current is None:
        return None
    old = (current.get("spec") or {}).get("trustDomain") or "cluster.local"
    spec = obj.get("spec") or {}
    new = spec.get("trustDomain") or "cluster.local"
    if old == new or old in (spec.get("trustDomainAliases") or ()):
        return None
    return (f"spec.trustDomain: changes from {old} to {new}, and {old} is not in "
            "spec.trustDomainAliases: workload certificates name " + old + " until they are "
            "re-issued (at renewal, or `tulle ca rotate`), and until then every mTLS call "
            f"between proxies fails; add {old} to spec.trustDomainAliases, re-issue, then "
            "remove it")


__all__ = ["Preview", "trust_domain_change", "warnings"]
