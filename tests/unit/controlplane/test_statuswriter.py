"""The compiler's conditions in each kind's status shape: per parent for routes (Gateway API),
top-level for the rest, with lastTransitionTime kept while a condition's status holds."""

from __future__ import annotations

from typing import Any

from tulle.api import parse
from tulle.api.gateway.common import CONTROLLER_NAME
from tulle.controlplane.statuswriter import desired_status

T0, T1 = "2024-01-01T00:00:00Z", "2024-01-02T00:00:00Z"
SVC_A = {"group": "", "kind": "Service", "name": "a", "port": 80}
SVC_B = {"group": "", "kind": "Service", "name": "b"}


def route(**status: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "shop", "generation": 2},
        "spec": {"parentRefs": [SVC_A, SVC_B], "rules": [{"backendRefs": [{"name": "a", "port": 80}]}]}}
    if status:
        obj["status"] = status
    return obj


def cond(type_: str, status: str, reason: str, **extra: Any) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": "", "observedGeneration": 2,
            **extra}


def test_a_route_reports_one_entry_per_parent_ref_with_our_controller_name() -> None:
    status = desired_status(route(), [cond("Accepted", "True", "Accepted"),
                                      cond("ResolvedRefs", "True", "ResolvedRefs")], T0)
    assert [p["parentRef"] for p in status["parents"]] == [SVC_A, SVC_B]
    assert {p["controllerName"] for p in status["parents"]} == {CONTROLLER_NAME}
    assert [c["type"] for c in status["parents"][0]["conditions"]] == ["Accepted", "ResolvedRefs"]
    assert "conditions" not in status
    # the shape is the model's: `get -o yaml` output validates (status included)
    parse({**route(), "status": status})


def test_a_condition_naming_its_parent_goes_to_that_parent_only() -> None:
    status = desired_status(route(), [cond("Accepted", "True", "Accepted", parent=0),
                                      cond("Accepted", "False", "NoMatchingParent", parent=1),
                                      cond("ResolvedRefs", "True", "ResolvedRefs")], T0)
    first, second = status["parents"]
    assert [(c["type"], c["status"]) for c in first["conditions"]] == [
        ("Accepted", "True"), ("ResolvedRefs", "True")]
    assert [(c["type"], c["status"]) for c in second["conditions"]] == [
        ("Accepted", "False"), ("ResolvedRefs", "True")]
    assert all("parent" not in c for p in status["parents"] for c in p["conditions"])


def test_last_transition_time_is_kept_while_the_status_holds() -> None:
    before = desired_status(route(), [cond("Accepted", "True", "Accepted"),
                                      cond("ResolvedRefs", "True", "ResolvedRefs")], T0)
    same = desired_status(route(**before), [cond("Accepted", "True", "Accepted"),
                                            cond("ResolvedRefs", "True", "ResolvedRefs")], T1)
    assert same == before  # nothing to write
    flipped = desired_status(route(**before), [cond("Accepted", "True", "Accepted", message="new words"),
                                               cond("ResolvedRefs", "False", "BackendNotFound")], T1)
    accepted, refs = flipped["parents"][0]["conditions"]
    assert accepted["lastTransitionTime"] == T0 and accepted["message"] == "new words"
    assert refs["lastTransitionTime"] == T1


def test_other_controllers_entries_are_kept_and_the_old_top_level_shape_dropped() -> None:
    theirs = {"parentRef": SVC_A, "controllerName": "example.com/other",
              "conditions": [cond("Accepted", "True", "Accepted", lastTransitionTime=T0)]}
    old = route(conditions=[cond("Accepted", "True", "Accepted", lastTransitionTime=T0)],
                parents=[theirs])
    status = desired_status(old, [cond("Accepted", "True", "Accepted")], T1)
    assert "conditions" not in status
    assert status["parents"][-1] == theirs
    assert len(status["parents"]) == 3


def test_other_kinds_keep_top_level_conditions_and_the_rest_of_their_status() -> None:
    mesh = {"kind": "Mesh", "metadata": {"name": "default"}, "status": {"note": "x"}}
    status = desired_status(mesh, [cond("DefaultsApplied", "False", "UnsupportedValue")], T0)
    assert status["note"] == "x"
    assert status["conditions"][0]["lastTransitionTime"] == T0
