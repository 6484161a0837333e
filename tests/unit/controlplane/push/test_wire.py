"""The shared-work frames are byte-for-byte the frames of the plain encoder and `diff`."""

from __future__ import annotations

from typing import Any

import pytest

from tulle.api.registry import parse
from tulle.controlplane.compiler import MeshInputs, PartCache, compile_mesh
from tulle.controlplane.push.wire import WireCache
from tulle.proxyconfig.delta import (
    ENDPOINTS,
    POSITIONS,
    UNITS,
    VIRTUAL_HOSTS,
    WHOLE,
    apply_delta,
    diff,
)
from tulle.proxyconfig.dns_delta import DNS_HOSTS
from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.stream import (
    DeltaMsg,
    FrameDecoder,
    decode_delta,
    delta_message,
    encode,
    snapshot_message,
)
from tulle.proxyconfig.telemetry_delta import TELEMETRY_PEERS

NS = "shop"
Key = tuple[str, str]


def canon(doc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = parse(doc).model_dump(mode="json", by_alias=True, exclude_none=True)
    return out


def workload(name: str, app: str, port: int = 8080, **labels: str) -> dict[str, Any]:
    return canon({"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
                  "metadata": {"name": name, "namespace": NS, "labels": {"app": app, **labels}},
                  "spec": {"address": "127.0.0.1", "dnsPort": 15053,  # (mesh DNS hosts too)
                           "ports": [{"name": "http", "port": port, "targetPort": 9000}]}})


def service(name: str) -> dict[str, Any]:
    doc = canon({"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Service",
                 "metadata": {"name": name, "namespace": NS},
                 "spec": {"selector": {"app": name},
                          "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
    doc["status"] = {"virtualIP": f"10.96.0.{int(name.rsplit('-', 1)[1]) + 1}"}
    return doc


def route(parent: str, backend: str) -> dict[str, Any]:
    return canon({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                  "metadata": {"name": "r", "namespace": NS},
                  "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": parent,
                                           "port": 80}],
                           "rules": [{"backendRefs": [{"name": backend, "port": 80}]}]}})


BASE = [service(f"svc-{i}") for i in range(6)] + [
    workload(f"w-{i}", f"svc-{i % 6}") for i in range(8)]

STEPS: list[tuple[str, list[dict[str, Any]]]] = [
    ("an endpoint added", [*BASE, workload("w-8", "svc-2")]),
    ("a route attached", [*BASE, workload("w-8", "svc-2"), route("svc-1", "svc-3")]),
    ("the route moved", [*BASE, workload("w-8", "svc-2"), route("svc-1", "svc-4")]),
    ("a service removed", [r for r in BASE if r["metadata"]["name"] != "svc-4"]),
    ("a workload's own port changed", [workload("w-0", "svc-0", port=8081), *BASE[1:]]),
    ("a service added in the middle", [*BASE, service("svc-10")]),
    ("nothing", [*BASE, service("svc-10")]),
]


def route_weights(parent: str, weights: dict[str, int]) -> dict[str, Any]:
    doc = route(parent, parent)
    doc["spec"]["rules"][0]["backendRefs"] = [{"name": b, "port": 80, "weight": w}
                                              for b, w in weights.items()]
    return doc


def own_identity(doc: dict[str, Any], sa: str) -> dict[str, Any]:
    doc["spec"]["serviceAccount"] = sa  # an identity no other workload has: a mesh peer
    return doc


STEPS += [
    ("a workload with its own identity", [*BASE, service("svc-10"),
                                          own_identity(workload("w-9", "svc-3"), "w9")]),
    ("a canary weight", [*BASE, service("svc-10"), route_weights("svc-1", {"svc-1": 9,
                                                                            "svc-2": 1})]),
    ("the canary moved", [*BASE, service("svc-10"), route_weights("svc-1", {"svc-1": 5,
                                                                             "svc-2": 5})]),
]

def mesh_tracing(percent: float) -> dict[str, Any]:
    return canon({"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
                  "metadata": {"name": "default"},
                  "spec": {"observability": {"tracing": {"sampling": percent}}}})


def mesh_access_log(percent: float) -> dict[str, Any]:
    return canon({"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
                  "metadata": {"name": "default"},
                  "spec": {"observability": {"accessLog": {"samplePercent": percent}}}})


STEPS += [
    ("tracing on", [*BASE, service("svc-10"), mesh_tracing(1.0)]),
    ("tracing's rate changed", [*BASE, service("svc-10"), mesh_tracing(5.0)]),
    ("tracing off", [*BASE, service("svc-10")]),
    ("access log on", [*BASE, service("svc-10"), mesh_access_log(1.0)]),
    ("access log's sampling changed", [*BASE, service("svc-10"), mesh_access_log(5.0)]),
    ("access log off", [*BASE, service("svc-10")]),
]

UNIT_SETS = [UNITS, WHOLE, frozenset({VIRTUAL_HOSTS}), frozenset({ENDPOINTS, POSITIONS})]


@pytest.mark.parametrize("units", UNIT_SETS, ids=lambda u: "+".join(sorted(u)) or "whole")
@pytest.mark.parametrize("big", [16 * 1024, 200])
def test_frames_equal_the_plain_encoding_through_a_series_of_changes(
        big: int, units: frozenset[str]) -> None:
    """`big=200` sends the route table and most clusters as separate pieces."""
    parts, wire = PartCache(), WireCache(big=big)
    seen: set[str] = set()
    before = compile_mesh(MeshInputs.from_resources(BASE), parts).snapshots
    for key, cfg in before.items():
        assert b"".join(wire.snapshot_frame(cfg)) == encode(snapshot_message(cfg)), key
    for what, resources in STEPS:
        after = compile_mesh(MeshInputs.from_resources(resources), parts).snapshots
        wire.rotate()
        for key in sorted(set(before) & set(after)):
            old, new = before[key], after[key]
            frame = b"".join(wire.delta_frame(old, new, units))
            assert frame == encode(delta_message(diff(old, new, units))), (what, key)
            assert _rebuilt(old, frame) == new, (what, key)
            seen |= _units_in(frame)
            assert b"".join(wire.snapshot_frame(new)) == encode(
                snapshot_message(new)), (what, key)
        before = after
    # The series exercises every unit it was allowed (and none it was not).
    assert seen == units


def test_a_canary_weight_change_is_one_virtual_host_on_the_wire() -> None:
    parts, wire = PartCache(), WireCache()
    mesh = [service(f"svc-{i}") for i in range(60)] + [
        workload(f"w-{i}", f"svc-{i}") for i in range(60)]
    a = compile_mesh(MeshInputs.from_resources(
        [*mesh, route_weights("svc-1", {"svc-1": 9, "svc-2": 1})]), parts).snapshots
    wire.rotate()
    b = compile_mesh(MeshInputs.from_resources(
        [*mesh, route_weights("svc-1", {"svc-1": 5, "svc-2": 5})]), parts).snapshots
    key = (NS, "w-7")
    small = b"".join(wire.delta_frame(a[key], b[key]))
    whole = b"".join(wire.delta_frame(a[key], b[key], WHOLE))
    assert len(small) < 1500 < 10 * 1500 < len(whole)
    assert small.count(b'"name":"svc-1.') == 1 and b"svc-3." not in small
    assert wire.unit(a[key].route_tables[0], b[key].route_tables[0], VIRTUAL_HOSTS) is \
        wire.unit(a[key].route_tables[0], b[key].route_tables[0], VIRTUAL_HOSTS)  # once


def test_a_big_resource_is_the_same_bytes_object_in_every_frame() -> None:
    parts, wire = PartCache(), WireCache(big=200)
    snaps = compile_mesh(MeshInputs.from_resources(BASE), parts).snapshots
    frames = [wire.snapshot_frame(cfg) for cfg in snaps.values()]
    table = max(frames[0], key=len)
    assert len(table) >= 200
    assert all(any(p is table for p in f) for f in frames)


def test_unrelated_objects_with_equal_content_are_not_confused() -> None:
    """Identity is only a shortcut: separately built but equal resources diff to nothing."""
    wire = WireCache()
    a = compile_mesh(MeshInputs.from_resources(BASE)).snapshots
    b = compile_mesh(MeshInputs.from_resources(BASE)).snapshots  # no cache: new objects
    key = sorted(a)[0]
    frame = b"".join(wire.delta_frame(a[key], b[key]))
    assert frame == encode(delta_message(diff(a[key], b[key])))
    assert b'"upsert"' not in frame


def _rebuilt(old: ProxyConfig, frame: bytes) -> ProxyConfig:
    (msg,) = FrameDecoder().feed(frame)
    assert isinstance(msg, DeltaMsg)
    return apply_delta(old, decode_delta(msg.delta))


def _units_in(frame: bytes) -> set[str]:
    (msg,) = FrameDecoder().feed(frame)
    assert isinstance(msg, DeltaMsg)
    d = decode_delta(msg.delta)
    return {u for u, there in ((VIRTUAL_HOSTS, d.virtual_hosts), (ENDPOINTS, d.endpoints),
                               (POSITIONS, any(v.at for v in [
                                   d.listeners, d.route_tables, d.clusters, *d.virtual_hosts])),
                               (DNS_HOSTS, d.dns_hosts is not None),
                               (TELEMETRY_PEERS, d.telemetry_peers is not None))
            if there}
