"""`delta-telemetry-peers`: the identities table travels as what changed, or whole."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tulle.proxyconfig.delta import WHOLE, DeltaError, apply_delta, diff
from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.stream import decode_delta


def _peer(i: int, version: str = "v1") -> dict[str, Any]:
    return {"principal": f"spiffe://td/ns/a/sa/w{i:04d}", "workload": f"w{i}", "version": version}


def _cfg(version: str, peers: list[dict[str, Any]], **metrics: Any) -> ProxyConfig:
    return msgspec.convert({"version": version, "telemetry": {"metrics": {
        "workload": "me", "peers": peers, **metrics}}}, ProxyConfig)


def _wire(d: Any) -> Any:
    return decode_delta(msgspec.Raw(msgspec.json.encode(d)))


def test_a_new_workload_is_one_entry_and_applies_to_the_same_config() -> None:
    old = _cfg("1", [_peer(i) for i in range(1000)])
    new = _cfg("2", [_peer(i) for i in range(1000)] + [_peer(5000)])
    d = diff(old, new)
    assert d.telemetry is None and d.telemetry_peers is not None
    assert [p["principal"] for p in d.telemetry_peers.upsert] == ["spiffe://td/ns/a/sa/w5000"]
    assert len(msgspec.json.encode(d)) < 400  # the whole table is ~80 KB
    assert apply_delta(old, _wire(d)) == new
    # Changed, removed and reordered entries too.
    changed = _cfg("3", [_peer(1, "v2"), _peer(0)] + [_peer(i) for i in range(3, 1000)])
    d2 = diff(new, changed)
    assert d2.telemetry_peers is not None
    assert apply_delta(new, _wire(d2)) == changed


def test_without_the_unit_or_with_other_changes_the_section_goes_whole() -> None:
    old = _cfg("1", [_peer(1)])
    new = _cfg("2", [_peer(1), _peer(2)])
    d = diff(old, new, WHOLE)
    assert d.telemetry is not None and d.telemetry_peers is None
    assert apply_delta(old, _wire(d)) == new
    both = _cfg("3", [_peer(1), _peer(3)], cluster="eu")
    d2 = diff(new, both)
    assert d2.telemetry is not None and d2.telemetry_peers is None
    assert apply_delta(new, _wire(d2)) == both
    assert diff(both, both).empty


@pytest.mark.parametrize(("patch", "path"), [
    ({"remove": ["spiffe://td/ns/a/sa/nobody"]}, "delta.telemetry_peers.remove[0]"),
    ({"upsert": [_peer(7), _peer(7)]}, "delta.telemetry_peers.upsert[1]"),
    ({"order": ["spiffe://td/ns/a/sa/w0001", "x"]}, "delta.telemetry_peers.order"),
])
def test_a_delta_diff_never_writes_is_refused_with_its_path(patch: dict[str, Any],
                                                             path: str) -> None:
    base = _cfg("1", [_peer(1)])
    doc = {"version": "2", "base_version": "1", "telemetry_peers": patch}
    with pytest.raises(DeltaError) as err:
        apply_delta(base, _wire(doc))
    assert err.value.path == path


def test_peers_for_a_proxy_without_metrics_are_refused() -> None:
    base = msgspec.convert({"version": "1"}, ProxyConfig)
    doc = {"version": "2", "base_version": "1", "telemetry_peers": {"upsert": [_peer(1)]}}
    with pytest.raises(DeltaError) as err:
        apply_delta(base, _wire(doc))
    assert err.value.path == "delta.telemetry_peers"
