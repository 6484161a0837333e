"""`Mesh.spec.observability.tap` (ADR 0056): defaults, bounds with their paths."""

from __future__ import annotations

from tests.unit.api.support import Errors, with_

from tulle.api import parse
from tulle.api.mesh import Mesh

MESH = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh", "metadata": {"name": "default"}}


def test_defaults_let_every_token_tap_at_up_to_100_per_second() -> None:
    mesh = parse(MESH)
    assert isinstance(mesh, Mesh)
    tap = mesh.spec.observability.tap
    assert (tap.enabled, tap.maxRate, tap.headers) == (True, 100.0, True)


def test_bounds(errors: Errors) -> None:
    assert errors(with_(MESH, "spec", {"observability": {"tap": {"maxRate": 1000}}})) == [
        ("spec.observability.tap.maxRate", "must be <= 100.0, got 1000")]
    assert errors(with_(MESH, "spec", {"observability": {"tap": {"maxRate": 0}}})) == [
        ("spec.observability.tap.maxRate", "must be >= 0.1, got 0")]
    assert errors(with_(MESH, "spec", {"observability": {"tap": {"nope": 1}}}))[0][0] == (
        "spec.observability.tap.nope")
