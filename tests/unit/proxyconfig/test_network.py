"""`listeners[].network_filters`: a tagged list, every bad entry refused with its path, only on
listeners nothing can bypass it on, and withheld (never sent) to proxies without the feature."""

from __future__ import annotations

import copy
from typing import Any

import msgspec
import pytest

from tulle.proxyconfig import ConfigError, validate
from tulle.proxyconfig.features import BY_NAME, withhold_config
from tulle.proxyconfig.network import FlowLog, SourceIP


def config(filters: list[Any], **listener: Any) -> dict[str, Any]:
    lst = {"name": "in", "port": 1, "protocol": "tcp", "cluster": "db", **listener,
           "network_filters": filters}
    return {"listeners": [lst], "clusters": [{"name": "db", "protocol": "tcp"}]}


def errors(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        validate(raw)
    return [str(e) for e in exc.value.errors]


def test_a_good_list_decodes_to_typed_configs_in_config_order() -> None:
    cfg = validate(config([{"type": "flow_log"},
                           {"type": "source_ip", "allow": ["10.0.0.0/8"], "deny": ["::1"]}]))
    assert cfg.listeners[0].network_filters == [
        FlowLog(), SourceIP(allow=["10.0.0.0/8"], deny=["::1"])]


@pytest.mark.parametrize(("entry", "expected"), [
    ({"type": "source_ip", "allow": ["10.0.0.0/33"]},
     "listeners[0].network_filters[0].allow[0]: not an IP address or CIDR: '10.0.0.0/33'"),
    ({"type": "source_ip", "deny": ["10.0.0.1", "nope"]},
     "listeners[0].network_filters[0].deny[1]: not an IP address or CIDR: 'nope'"),
    ({"type": "source_ip"},
     "listeners[0].network_filters[0]: a source_ip filter needs `allow` or `deny`"),
    ({"type": "source_ip", "allow": "10.0.0.0/8"},
     "listeners[0].network_filters[0].allow: expected a list"),
    ({"type": "source_ip", "alow": ["10.0.0.0/8"]},
     "listeners[0].network_filters[0].alow: unknown field"),
    ({"type": "rbac"}, "listeners[0].network_filters[0].type: must be one of"),
    ({"allow": ["10.0.0.0/8"]},
     "listeners[0].network_filters[0].type: required field is missing (one of"),
    ({"type": "connection_limit", "max_connections": 0},
     "listeners[0].network_filters[0].max_connections: must be >= 1"),
    ({"type": "connection_limit"},
     "listeners[0].network_filters[0].max_connections: required field is missing"),
    ({"type": "flow_log", "logger": "no spaces please"},
     "listeners[0].network_filters[0].logger:"),
])
def test_bad_entries_are_refused_with_their_path(entry: dict[str, Any], expected: str) -> None:
    found = errors(config([entry]))
    assert any(e.startswith(expected) for e in found), found


def test_every_bad_entry_is_reported_at_once() -> None:
    found = errors(config([{"type": "source_ip", "allow": 5}, {"type": "flow_log"},
                           {"type": "rbac"}]))
    assert [e.split(":")[0] for e in found] == [
        "listeners[0].network_filters[0].allow", "listeners[0].network_filters[2].type"]
    found = errors(config([{"type": "source_ip", "allow": ["x"]}, {"type": "flow_log"},
                           {"type": "source_ip", "deny": ["y"]}]))
    assert found == [
        "listeners[0].network_filters[0].allow[0]: not an IP address or CIDR: 'x'",
        "listeners[0].network_filters[2].deny[0]: not an IP address or CIDR: 'y'"]


@pytest.mark.parametrize("protocol", ["auto", "http1", "http2"])
def test_only_tcp_listeners_take_them(protocol: str) -> None:
    """An HTTP connection on an auto listener would never pass an L4 filter: refused, not a
    silent gap in an authorization policy."""
    raw = config([{"type": "source_ip", "deny": ["10.0.0.0/8"]}], protocol=protocol)
    assert errors(raw) == [
        f"listeners[0].network_filters: only a listener with protocol `tcp` takes network "
        f"filters (this one is {protocol!r})"]


def test_a_transparent_tcp_listener_needs_every_destination_tcp() -> None:
    raw = config([{"type": "source_ip", "deny": ["10.0.0.0/8"]}], mode="transparent",
                 cluster="", passthrough=True,
                 destinations=[{"port": 5432, "cluster": "db", "protocol": "tcp"},
                               {"port": 80, "cluster": "db"}])
    assert errors(raw) == [
        "listeners[0].destinations[1].protocol: must be `tcp` on a listener with network "
        "filters"]


def test_withheld_from_a_proxy_without_the_feature() -> None:
    cfg = validate(config([{"type": "source_ip", "deny": ["10.0.0.0/8"]}]))
    doc = msgspec.to_builtins(cfg)
    before = copy.deepcopy(doc)
    withhold_config(doc, [BY_NAME["network-filters"]])
    assert "network_filters" in before["listeners"][0]
    assert "network_filters" not in doc["listeners"][0]
    assert validate(doc).listeners[0].network_filters == []
