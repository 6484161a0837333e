"""Config features: each names real fields of the model, and withholding removes exactly them."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from msgspec import inspect as mi

from tulle.proxyconfig.delta import apply_delta, diff
from tulle.proxyconfig.features import (
    BY_NAME,
    FEATURES,
    SUPPORTED,
    lacking,
    withhold_config,
    withhold_delta,
)
from tulle.proxyconfig.model import Listener, Overload, ProxyConfig, Settings
from tulle.proxyconfig.stream import decode_delta, decode_snapshot


def _field_type(t: mi.Type, segments: list[str]) -> mi.Type:
    for seg in segments:
        many = seg.endswith("[]")
        name = seg[:-2] if many else seg
        assert isinstance(t, mi.StructType), f"{seg}: not inside a struct"
        (f,) = [f for f in t.fields if f.encode_name == name] or [None]  # type: ignore[list-item]
        assert f is not None, f"no field {name!r}"
        t = f.type
        if many:
            assert isinstance(t, mi.ListType), f"{seg}: not a list"
            t = t.item_type
    return t


@pytest.mark.parametrize("feature", FEATURES, ids=lambda f: f.name)
def test_every_feature_path_names_a_field_of_the_model(feature: Any) -> None:
    for p in feature.paths:
        _field_type(mi.type_info(ProxyConfig), p.split("."))


def test_names_are_unique_and_a_proxy_of_this_build_announces_them_all() -> None:
    assert len(BY_NAME) == len(FEATURES)
    assert set(SUPPORTED) == set(BY_NAME)
    assert lacking(SUPPORTED) == ()
    assert [f.name for f in lacking(["overload"])] == [
        "connection-limits", "path-normalization", "tcp-idle-timeout"]


def _cfg(version: str, max_conn: int) -> ProxyConfig:
    return ProxyConfig(
        version=version,
        settings=Settings(max_connections=max_conn,
                          overload=Overload(max_rss_bytes=max_conn * 1000)),
        listeners=[Listener(name="a", port=1, max_connections=max_conn),
                   Listener(name="b", port=2)])


def test_a_withheld_snapshot_has_none_of_the_fields_and_still_decodes() -> None:
    doc = msgspec.to_builtins(_cfg("v1", 7))
    withhold_config(doc, lacking(["path-normalization", "tcp-idle-timeout"]))
    assert "max_connections" not in doc["settings"] and "overload" not in doc["settings"]
    assert all("max_connections" not in x for x in doc["listeners"])
    assert "path_normalization" in doc["settings"]  # announced: kept
    got = decode_snapshot(msgspec.Raw(msgspec.json.encode(doc)))
    assert got.settings.max_connections == 0 and got.listeners[0].max_connections == 0


def test_a_withheld_delta_has_none_of_the_fields_in_singletons_or_upserts() -> None:
    old, new = _cfg("v1", 7), _cfg("v2", 9)
    doc = msgspec.to_builtins(diff(old, new))
    assert doc["listeners"]["upsert"][0]["max_connections"] == 9
    withhold_delta(doc, lacking([]))
    assert "max_connections" not in doc["listeners"]["upsert"][0]
    assert {"max_connections", "overload", "tcp_idle_timeout_ms",
            "path_normalization"}.isdisjoint(doc["settings"])
    base = decode_snapshot(msgspec.Raw(msgspec.json.encode(
        _withheld(msgspec.to_builtins(old)))))
    rebuilt = apply_delta(base, decode_delta(msgspec.Raw(msgspec.json.encode(doc))))
    assert rebuilt.version == "v2" and rebuilt.listeners[0].max_connections == 0


def _withheld(doc: dict[str, Any]) -> dict[str, Any]:
    withhold_config(doc, FEATURES)
    return doc
