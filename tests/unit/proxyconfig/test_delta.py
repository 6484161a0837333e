"""apply_delta(a, diff(a, b)) == b for any two snapshots; bad deltas are refused."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tulle.proxyconfig import ProxyConfig, validate
from tulle.proxyconfig.delta import (
    COLLECTIONS,
    ENDPOINTS,
    POSITIONS,
    UNITS,
    VIRTUAL_HOSTS,
    WHOLE,
    CollectionDelta,
    Delta,
    DeltaError,
    EndpointsDelta,
    VirtualHostsDelta,
    apply_delta,
    diff,
)

names = st.sampled_from(["a", "b", "c", "d", "e"])


@st.composite
def snapshots(draw: st.DrawFn) -> ProxyConfig:
    cluster_names = draw(st.lists(names, unique=True, max_size=5))
    clusters = [{"name": n, "endpoints": [{"address": "127.0.0.1", "port": p}
                                           for p in draw(st.lists(st.integers(1, 3),
                                                                  min_size=1, max_size=2))],
                 "connect_timeout_ms": draw(st.sampled_from([1000, 1000, 2000]))}
                for n in cluster_names]
    tables: list[dict[str, Any]] = []
    if cluster_names:
        for t in draw(st.lists(names, unique=True, max_size=3)):
            tables.append({"name": t, "virtual_hosts": [
                {"name": h, "rules": [
                    {"backends": [{"cluster": draw(st.sampled_from(cluster_names)),
                                   "weight": draw(st.integers(1, 2))}]}]}
                for h in draw(st.lists(names, unique=True, max_size=4))]})
    listeners = [{"name": n, "port": 15000 + i, "cluster": cluster_names[0]}
                 for i, n in enumerate(draw(st.lists(names, unique=True, max_size=3)))
                 ] if cluster_names else []
    return validate({
        "version": str(draw(st.integers(0, 1000))),
        "node": {"name": draw(st.sampled_from(["x", "y"]))},
        "settings": {"workers": 1, "request_timeout_ms": draw(st.sampled_from([1000, 2000]))},
        "listeners": listeners, "clusters": clusters, "route_tables": tables,
    })


unit_sets = st.sampled_from([UNITS, WHOLE, frozenset({VIRTUAL_HOSTS}), frozenset({ENDPOINTS}),
                             frozenset({POSITIONS})])


@settings(max_examples=400, deadline=None)
@given(snapshots(), snapshots(), unit_sets)
def test_diff_then_apply_rebuilds_the_new_snapshot(a: ProxyConfig, b: ProxyConfig,
                                                   units: frozenset[str]) -> None:
    d = diff(a, b, units)
    wire = msgspec.json.decode(msgspec.json.encode(d), type=Delta)  # survives the wire
    got = apply_delta(a, wire)
    assert got == b
    assert [x.name for x in got.route_tables] == [x.name for x in b.route_tables]
    if VIRTUAL_HOSTS not in units:
        assert not d.virtual_hosts
    if ENDPOINTS not in units:
        assert not d.endpoints
    if POSITIONS not in units:
        assert not any(getattr(d, c).at for c in COLLECTIONS)
    # Whatever the delta did not touch is the base's very object (the runtime compares by `is`).
    old_hosts = {(t.name, h.name): h for t in a.route_tables for h in t.virtual_hosts}
    sent = {(v.route_table, h["name"]) for v in d.virtual_hosts for h in v.upsert}
    for t in got.route_tables:
        for h in t.virtual_hosts:
            o = old_hosts.get((t.name, h.name))
            if o is not None and o == h and (t.name, h.name) not in sent and all(
                    u["name"] != t.name for u in d.route_tables.upsert):
                assert h is o
    old_clusters = {c.name: c for c in a.clusters}
    for c in got.clusters:
        o = old_clusters.get(c.name)
        if o is not None and o == c:
            assert c is o


def _mesh(weight: int, n: int = 50, extra: bool = False) -> ProxyConfig:
    hosts = [{"name": f"svc-{i}", "domains": [f"svc-{i}"], "rules": [
        {"backends": [{"cluster": f"c-{i}", "weight": weight if i == 7 else 1}]}]}
        for i in range(n)]
    clusters = [{"name": f"c-{i}", "endpoints": [{"address": "127.0.0.1", "port": 80 + i}],
                 "tls": {"server_name": f"svc-{i}"}} for i in range(n)]
    if extra:
        clusters[3]["endpoints"].append({"address": "127.0.0.2", "port": 83})
        hosts.insert(20, {"name": "svc-new", "domains": ["svc-new"], "rules": [
            {"backends": [{"cluster": "c-3"}]}]})
    return validate({"version": f"{weight}{extra}", "clusters": clusters,
                     "route_tables": [{"name": "outbound", "virtual_hosts": hosts}]})


def test_a_weight_change_sends_one_virtual_host_and_keeps_the_others_by_identity() -> None:
    a, b = _mesh(1), _mesh(2)
    d = diff(a, b)
    assert not d.route_tables.upsert and not d.clusters.upsert
    (v,) = d.virtual_hosts
    assert v.route_table == "outbound" and [h["name"] for h in v.upsert] == ["svc-7"]
    assert not v.remove and not v.order and not v.at
    got = apply_delta(a, d)
    assert got == b
    old, new = a.route_tables[0].virtual_hosts, got.route_tables[0].virtual_hosts
    assert [x is y for x, y in zip(old, new, strict=True)].count(False) == 1
    assert new[7] is not old[7] and new[7] == b.route_tables[0].virtual_hosts[7]
    assert got.clusters is not a.clusters and all(
        x is y for x, y in zip(a.clusters, got.clusters, strict=True))
    whole = len(msgspec.json.encode(diff(a, b, WHOLE)))
    assert len(msgspec.json.encode(d)) * 10 < whole


def test_an_endpoint_change_sends_the_endpoint_list_and_an_insert_its_position() -> None:
    a, b = _mesh(1), _mesh(1, extra=True)
    d = diff(a, b)
    (e,) = d.endpoints
    assert e.cluster == "c-3" and len(e.endpoints) == 2 and not d.clusters.upsert
    (v,) = d.virtual_hosts
    assert [h["name"] for h in v.upsert] == ["svc-new"]
    assert v.at == {"svc-new": 20} and not v.order  # not 51 names
    got = apply_delta(a, d)
    assert got == b
    assert got.clusters[3].tls is a.clusters[3].tls  # the TLS struct kept: same SSL context
    assert all(x is y for i, (x, y) in enumerate(zip(a.clusters, got.clusters, strict=True))
               if i != 3)
    # Without the positions unit the new order goes whole; without the others, whole units.
    assert len(diff(a, b, frozenset({VIRTUAL_HOSTS})).virtual_hosts[0].order) == 51
    w = diff(a, b, WHOLE)
    assert not w.endpoints and not w.virtual_hosts
    assert [c["name"] for c in w.clusters.upsert] == ["c-3"]
    assert apply_delta(a, w) == b


def test_a_route_table_changed_beyond_its_hosts_is_sent_whole() -> None:
    a = validate({"version": "1", "route_tables": [{"name": "t", "virtual_hosts": [
        {"name": "h"}]}]})
    b = validate({"version": "2", "route_tables": [{"name": "t", "virtual_hosts": [
        {"name": "h", "domains": ["x"]}]}, {"name": "u"}]})
    d = diff(a, b)
    assert [v.route_table for v in d.virtual_hosts] == ["t"]
    assert [u["name"] for u in d.route_tables.upsert] == ["u"]  # new: whole
    assert apply_delta(a, d) == b


@pytest.mark.parametrize(("patch", "message"), [
    (Delta(version="2", base_version="1", virtual_hosts=[
        VirtualHostsDelta(route_table="zzz", remove=["h"])]), "unknown RouteTable 'zzz'"),
    (Delta(version="2", base_version="1", virtual_hosts=[
        VirtualHostsDelta(route_table="t", remove=["zzz"])]),
     "cannot remove unknown VirtualHost of RouteTable 't' 'zzz'"),
    (Delta(version="2", base_version="1", endpoints=[EndpointsDelta(cluster="zzz")]),
     "endpoints for unknown Cluster 'zzz'"),
    (Delta(version="2", base_version="1", clusters=CollectionDelta(
        upsert=[{"name": "d"}], at={"d": 5})), "position 5 out of range"),
    (Delta(version="2", base_version="1", clusters=CollectionDelta(
        upsert=[{"name": "d"}], at={"c": 0})), "positions do not name exactly the added"),
    (Delta(version="2", base_version="1", clusters=CollectionDelta(
        upsert=[{"name": "d"}], at={"d": -1})), "position -1 out of range"),
    (Delta(version="2", base_version="1", virtual_hosts=[VirtualHostsDelta(
        route_table="t", upsert=[{"name": "g"}], order=["g"])]), "order does not list the same"),
])
def test_a_patch_that_does_not_fit_is_refused(patch: Delta, message: str) -> None:
    a = validate({"version": "1", "clusters": [{"name": "c"}],
                  "route_tables": [{"name": "t", "virtual_hosts": [{"name": "h"}]}]})
    with pytest.raises(DeltaError, match=message):
        apply_delta(a, patch)


def test_identical_snapshots_give_an_empty_delta() -> None:
    a = validate({"version": "1", "clusters": [{"name": "c"}]})
    assert diff(a, a).empty
    b = msgspec.structs.replace(a, version="2")
    d = diff(a, b)
    assert d.empty and d.version == "2"


def test_a_delta_for_another_base_is_refused() -> None:
    a = validate({"version": "1"})
    b = validate({"version": "2", "clusters": [{"name": "c"}]})
    c = validate({"version": "3"})
    with pytest.raises(DeltaError, match="based on version '1'"):
        apply_delta(c, diff(a, b))


def test_removing_an_unknown_name_is_refused() -> None:
    a = validate({"version": "1", "clusters": [{"name": "c"}]})
    bad = Delta(version="2", base_version="1", clusters=CollectionDelta(remove=["zzz"]))
    with pytest.raises(DeltaError, match="unknown Cluster 'zzz'"):
        apply_delta(a, bad)
