"""apply_delta(a, diff(a, b)) == b for any two snapshots; bad deltas are refused."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tulle.proxyconfig import ProxyConfig, validate
from tulle.proxyconfig.delta import CollectionDelta, Delta, DeltaError, apply_delta, diff

names = st.sampled_from(["a", "b", "c", "d", "e"])


@st.composite
def snapshots(draw: st.DrawFn) -> ProxyConfig:
    cluster_names = draw(st.lists(names, unique=True, max_size=5))
    clusters = [{"name": n, "endpoints": [{"address": "127.0.0.1",
                                            "port": draw(st.integers(1, 3))}]}
                for n in cluster_names]
    tables: list[dict[str, Any]] = []
    if cluster_names:
        for t in draw(st.lists(names, unique=True, max_size=3)):
            tables.append({"name": t, "virtual_hosts": [{"name": "h", "rules": [
                {"backends": [{"cluster": draw(st.sampled_from(cluster_names))}]}]}]})
    listeners = [{"name": n, "port": 15000 + i, "cluster": cluster_names[0]}
                 for i, n in enumerate(draw(st.lists(names, unique=True, max_size=3)))
                 ] if cluster_names else []
    return validate({
        "version": str(draw(st.integers(0, 1000))),
        "node": {"name": draw(st.sampled_from(["x", "y"]))},
        "settings": {"workers": 1, "request_timeout_ms": draw(st.sampled_from([1000, 2000]))},
        "listeners": listeners, "clusters": clusters, "route_tables": tables,
    })


@settings(max_examples=300, deadline=None)
@given(snapshots(), snapshots())
def test_diff_then_apply_rebuilds_the_new_snapshot(a: ProxyConfig, b: ProxyConfig) -> None:
    d = diff(a, b)
    wire = msgspec.json.decode(msgspec.json.encode(d), type=Delta)  # survives the wire
    assert apply_delta(a, wire) == b


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
