"""`Workload.spec.sidecar`: how a workload says no proxy fronts it (ADR 0033)."""

from __future__ import annotations

from tests.unit.api.support import Errors

from tulle.api import parse
from tulle.api.workload import Workload

W = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
     "metadata": {"name": "db-0", "namespace": "shop"}, "spec": {"address": "10.0.0.7"}}


def test_default_is_meshed_and_false_is_kept() -> None:
    w = parse(W)
    assert isinstance(w, Workload) and w.spec.sidecar is True
    off = parse({**W, "spec": {**W["spec"], "sidecar": False}})
    assert isinstance(off, Workload) and off.spec.sidecar is False


def test_not_a_bool(errors: Errors) -> None:
    assert [p for p, _ in errors({**W, "spec": {**W["spec"], "sidecar": "no"}})] == [
        "spec.sidecar"]
