"""What counts as a problem, and the ACCEPTED / REASON summary `tulle get` shows."""

from __future__ import annotations

from typing import Any

import pytest

from tulle.api.conditions import found, is_problem, problems, summary


def c(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def parents(*conds: dict[str, Any]) -> dict[str, Any]:
    ref = {"kind": "Service", "name": "web", "namespace": "shop", "port": 80}
    return {"status": {"parents": [{"parentRef": ref, "controllerName": "x", "conditions": list(conds)}]}}


@pytest.mark.parametrize(
    ("cond", "problem"),
    [
        (c("Accepted", "True", "Accepted"), False),
        (c("Accepted", "False", "Unsupported"), True),
        (c("ResolvedRefs", "False", "BackendNotFound"), True),
        (c("PartiallyInvalid", "True", "UnsupportedValue"), True),
        (c("PartiallyInvalid", "False", "Valid"), False),
        (c("DefaultsApplied", "False", "UnsupportedValue"), True),
        (c("Accepted", "Unknown", "Pending"), False),
    ],
)
def test_is_problem(cond: dict[str, Any], problem: bool) -> None:
    assert is_problem(cond) is problem


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({}, ("-", "-")),
        (parents(c("Accepted", "True", "Accepted"), c("ResolvedRefs", "True", "ResolvedRefs")),
         ("True", "Accepted")),
        (parents(c("Accepted", "True", "Accepted"), c("ResolvedRefs", "True", "ResolvedRefs"),
                 c("PartiallyInvalid", "True", "UnsupportedValue")), ("Partial", "UnsupportedValue")),
        (parents(c("Accepted", "True", "Accepted"), c("ResolvedRefs", "False", "BackendNotFound")),
         ("Partial", "BackendNotFound")),
        (parents(c("Accepted", "False", "NoMatchingParent")), ("False", "NoMatchingParent")),
        ({"status": {"conditions": [c("Accepted", "False", "Unsupported")]}}, ("False", "Unsupported")),
        ({"status": {"conditions": [c("DefaultsApplied", "True", "Applied")]}}, ("True", "Applied")),
    ],
)
def test_summary(obj: dict[str, Any], expected: tuple[str, str]) -> None:
    assert summary(obj) == expected


def test_conditions_say_which_parent_they_are_for() -> None:
    obj = parents(c("Accepted", "True", "Accepted"),
                  c("ResolvedRefs", "False", "BackendNotFound", "no svc x"))
    assert [f.line() for f in found(obj)] == [
        "Service shop/web:80: Accepted=True (Accepted)",
        "Service shop/web:80: ResolvedRefs=False (BackendNotFound): no svc x",
    ]
    assert [f.type for f in problems(obj)] == ["ResolvedRefs"]
