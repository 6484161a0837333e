"""Reading status conditions: which say something is not in force, and a one-line summary.

Shared by the control plane (apply's warnings), the CLI (`get`'s ACCEPTED / REASON columns,
`describe`) and tests, so that all three agree on what counts as a problem.  Conditions live
either at `status.conditions` (Mesh, policies, Services) or, for routes, per parent at
`status.parents[].conditions`, as Gateway API reports them.

Most condition types are positive (`Accepted`, `ResolvedRefs`, `DefaultsApplied`: `False` is
the problem); a few are negative (`PartiallyInvalid`: `True` is the problem).  `Unknown` is
not a problem: it means "not decided yet".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

NEGATIVE_TYPES = frozenset({"PartiallyInvalid", "Conflicted"})
"""Condition types whose `True` is the abnormal state (Gateway API's "abnormal-true")."""


@dataclass(frozen=True, slots=True)
class Found:
    """One condition and where it is: `""` for `status.conditions`, else the parent it is for."""

    where: str
    condition: Mapping[str, Any]

    @property
    def type(self) -> str:
        return str(self.condition.get("type"))

    @property
    def reason(self) -> str:
        return str(self.condition.get("reason") or "")

    @property
    def message(self) -> str:
        return str(self.condition.get("message") or "")

    @property
    def problem(self) -> bool:
        return is_problem(self.condition)

    def line(self) -> str:
        """`Accepted=False (Unsupported): why` prefixed by the parent it is for, if any."""
        text = f"{self.type}={self.condition.get('status')} ({self.reason})"
        if self.message:
            text += f": {self.message}"
        return f"{self.where}: {text}" if self.where else text


def is_problem(condition: Mapping[str, Any]) -> bool:
    """Whether the condition says something stored is not (wholly) in force."""
    status = condition.get("status")
    if condition.get("type") in NEGATIVE_TYPES:
        return status == "True"
    return status == "False"


def parent_label(ref: Mapping[str, Any]) -> str:
    """`Service shop/reviews:80` for a parentRef (namespace and port when given)."""
    name = str(ref.get("name"))
    if ref.get("namespace"):
        name = f"{ref['namespace']}/{name}"
    if ref.get("port"):
        name += f":{ref['port']}"
    return f"{ref.get('kind') or 'Gateway'} {name}"


def found(obj: Mapping[str, Any]) -> Iterator[Found]:
    """Every condition of an object, top-level ones first, then each parent's in order."""
    status = obj.get("status") or {}
    for c in status.get("conditions") or []:
        yield Found("", c)
    for p in status.get("parents") or []:
        where = parent_label(p.get("parentRef") or {})
        for c in p.get("conditions") or []:
            yield Found(where, c)


def problems(obj: Mapping[str, Any]) -> list[Found]:
    return [f for f in found(obj) if f.problem]


def summary(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(ACCEPTED, REASON) for `tulle get`.

    ACCEPTED is `False` when some `Accepted` condition is False, `Partial` when the object is
    accepted but something of it is not in force (a problem condition of another type), `True`
    when no condition reports a problem, `-` when it has no conditions (nothing to judge yet).
    REASON is the first problem's reason, else the `Accepted` reason, else `-`.
    """
    conds = list(found(obj))
    if not conds:
        return "-", "-"
    bad = [f for f in conds if f.problem]
    if any(f.type == "Accepted" for f in bad):
        accepted = "False"
    elif bad:
        accepted = "Partial"
    else:
        accepted = "True"
    if bad:
        return accepted, bad[0].reason or "-"
    ok = next((f for f in conds if f.type == "Accepted"), conds[0])
    return accepted, ok.reason or "-"


__all__ = ["NEGATIVE_TYPES", "Found", "found", "is_problem", "parent_label", "problems", "summary"]
