"""The model is derived once per input change: a `PartCache` keeps the models of unchanged
workloads and Services (the very objects), and compiling with it gives exactly what compiling
from scratch gives."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tulle.controlplane.compiler import MeshInputs, PartCache, compile_mesh, derive
from tulle.controlplane.compiler.ir import Metadata


def workload(name: str, app: str, address: str, zone: str = "") -> dict[str, Any]:
    spec: dict[str, Any] = {"address": address,
                            "ports": [{"name": "http", "port": 18080, "targetPort": 8080}]}
    if zone:
        spec["zone"] = zone
    return {"kind": "Workload", "metadata": {"name": name, "namespace": "ns",
                                             "labels": {"app": app, "tier": "web"}},
            "spec": spec}


def service(name: str) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": "ns"},
            "spec": {"selector": {"app": name},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


def route(weights: tuple[int, int]) -> dict[str, Any]:
    return {"kind": "HTTPRoute", "metadata": {"name": "split", "namespace": "ns"},
            "spec": {"parentRefs": [{"kind": "Service", "name": "a", "port": 80}],
                     "rules": [{"backendRefs": [{"name": "a", "port": 80, "weight": weights[0]},
                                                {"name": "b", "port": 80,
                                                 "weight": weights[1]}]}]}}


BASE = [service("a"), service("b"), workload("a-0", "a", "127.0.0.2"),
        workload("b-0", "b", "127.0.0.3", zone="z1")]


def test_endpoints_carry_the_metadata_of_the_workload_behind_them() -> None:
    mesh = derive(MeshInputs.from_resources(BASE))
    b = next(sp for sp in mesh.services if sp.name == "b")
    assert [e.metadata for e in b.endpoints] == [Metadata(
        service="b", namespace="ns", workload="b-0", labels=(("app", "b"), ("tier", "web")),
        zone="z1")]
    assert b.metadata == Metadata(service="b", namespace="ns")
    assert b.endpoints[0].metadata.render() == {
        "service": "b", "namespace": "ns", "workload": "b-0",
        "labels": {"app": "b", "tier": "web"}}
    assert next(p for p in mesh.proxies if p.name == "b-0").metadata.zone == "z1"


def test_unchanged_workloads_and_services_keep_their_model_objects() -> None:
    cache = PartCache()
    m1 = derive(MeshInputs.from_resources(BASE), cache)
    moved = [*BASE[:3], workload("b-0", "b", "127.0.0.9", zone="z1")]  # b-0 changed address
    m2 = derive(MeshInputs.from_resources(moved), cache)
    a1, b1 = m1.proxies
    a2, b2 = m2.proxies
    assert a2 is a1 and b2 is not b1 and b2.address == "127.0.0.9"
    assert m2.services[0] is m1.services[0]  # a: nothing it selects changed
    assert m2.services[1] is not m1.services[1]  # b: its endpoint moved
    assert m2.services[1].endpoints[0].address == "127.0.0.9"


def test_compiling_with_the_cache_gives_what_compiling_from_scratch_gives() -> None:
    steps = [
        BASE,
        [*BASE, route((90, 10))],
        [*BASE, route((50, 50))],
        [*BASE[:3], workload("b-0", "b", "127.0.0.3", zone="z2"), route((50, 50))],
        [*BASE, workload("b-1", "b", "127.0.0.4"), route((50, 50))],
        [service("a"), workload("a-0", "a", "127.0.0.2")],
        BASE,
    ]
    cache = PartCache()
    for resources in steps:
        warm = compile_mesh(MeshInputs.from_resources(resources), cache)
        cold = compile_mesh(MeshInputs.from_resources(resources))
        assert warm.snapshots == cold.snapshots
        assert warm.conditions == cold.conditions
        assert warm.errors == cold.errors


# -- generated meshes: the cache never changes the answer ----------------------------------------

_APPS = ("a", "b", "c")


@st.composite
def _mesh(draw: st.DrawFn) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [service(app) for app in draw(st.sets(st.sampled_from(_APPS)))]
    for i in range(draw(st.integers(0, 4))):
        w = workload(f"w-{i}", draw(st.sampled_from(_APPS)), f"127.0.0.{draw(st.integers(2, 3))}",
                     zone=draw(st.sampled_from(("", "z1", "z2"))))
        if draw(st.booleans()):
            w["spec"]["ports"][0]["name"] = "grpc"  # the Service's targetPort name misses it
        docs.append(w)
    if draw(st.booleans()):
        docs.append(route((draw(st.integers(0, 3)), draw(st.integers(0, 3)))))
    return docs


@settings(max_examples=60, deadline=None)
@given(st.lists(_mesh(), min_size=1, max_size=5))
def test_any_sequence_of_meshes_compiles_the_same_with_and_without_the_cache(
        steps: list[list[dict[str, Any]]]) -> None:
    cache = PartCache()
    for resources in steps:
        warm = compile_mesh(MeshInputs.from_resources(resources), cache)
        cold = compile_mesh(MeshInputs.from_resources(resources))
        assert (warm.snapshots, warm.conditions, warm.errors) == (
            cold.snapshots, cold.conditions, cold.errors)
