"""Validation reports every error with its field path, and builds the config only when clean."""

from __future__ import annotations

from typing import Any

import pytest

from tulle.proxyconfig import ConfigError, load_text, validate


def good() -> dict[str, Any]:
    return {
        "listeners": [{"name": "out", "port": 15001, "route_table": "rt"}],
        "clusters": [{"name": "web", "endpoints": [{"address": "127.0.0.1", "port": 8080}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [
            {"name": "all", "rules": [{"backends": [{"cluster": "web"}]}]}]}],
    }


def errors_of(raw: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate(raw)
    return [str(e) for e in info.value.errors]


def test_a_good_config_builds_with_defaults() -> None:
    cfg = validate(good())
    assert cfg.listeners[0].protocol == "auto"
    assert cfg.settings.request_timeout_ms == 15000
    assert cfg.route_tables[0].virtual_hosts[0].rules[0].matches[0].path.value == "/"


def test_every_structural_error_is_reported_with_its_path() -> None:
    raw = good()
    raw["listeners"][0]["port"] = 99999
    raw["listeners"][0]["bogus"] = 1
    raw["clusters"][0]["endpoints"][0]["port"] = "http"
    raw["settings"] = {"workers": 0, "generate_request_id": "yes"}
    assert sorted(errors_of(raw)) == sorted([
        "listeners[0].port: must be <= 65535, got 99999",
        "listeners[0].bogus: unknown field",
        "clusters[0].endpoints[0].port: expected an integer, got str",
        "settings.workers: must be >= 1, got 0",
        "settings.generate_request_id: expected a boolean, got str",
    ])


def test_missing_required_fields_and_bad_enums() -> None:
    raw = good()
    del raw["listeners"][0]["port"]
    raw["clusters"][0]["protocol"] = "http3"
    errs = errors_of(raw)
    assert "listeners[0].port: required field is missing" in errs
    assert "clusters[0].protocol: must be one of 'http1', 'http2', 'tcp', got 'http3'" in errs


def test_cross_references_are_checked() -> None:
    raw = good()
    raw["listeners"].append({"name": "out", "port": 15001, "cluster": "nope"})
    raw["route_tables"][0]["virtual_hosts"][0]["rules"][0]["backends"] = [{"cluster": "gone"}]
    raw["route_tables"][0]["virtual_hosts"][0]["rules"][0]["matches"] = [
        {"path": {"value": "api"}}]
    errs = errors_of(raw)
    assert "listeners[1].name: duplicate name 'out'" in errs
    assert "listeners[1].cluster: no cluster named 'nope'" in errs
    assert "listeners[1].port: 127.0.0.1:15001 is already used by listeners[0]" in errs
    assert ("route_tables[0].virtual_hosts[0].rules[0].backends[0].cluster: "
            "no cluster named 'gone'") in errs
    assert 'route_tables[0].virtual_hosts[0].rules[0].matches[0].path.value: must start with "/"' \
        in errs


def test_explicit_listener_needs_a_target_and_weights_cannot_all_be_zero() -> None:
    raw = good()
    raw["listeners"][0].pop("route_table")
    raw["route_tables"][0]["virtual_hosts"][0]["rules"][0]["backends"] = [
        {"cluster": "web", "weight": 0}]
    errs = errors_of(raw)
    assert "listeners[0]: an explicit listener needs a route_table or a cluster" in errs
    assert "route_tables[0].virtual_hosts[0].rules[0].backends: weights must not all be zero" in errs


def test_bad_domains_and_addresses() -> None:
    raw = good()
    raw["listeners"][0]["address"] = "localhost"
    raw["route_tables"][0]["virtual_hosts"][0]["domains"] = ["a.*.b", ""]
    errs = errors_of(raw)
    assert "listeners[0].address: must be an IP address, got 'localhost'" in errs
    assert any(e.startswith("route_tables[0].virtual_hosts[0].domains[0]:") for e in errs)
    assert any(e.startswith("route_tables[0].virtual_hosts[0].domains[1]:") for e in errs)


def test_yaml_syntax_errors_name_the_position() -> None:
    with pytest.raises(ConfigError) as info:
        load_text("listeners: [\n  {name: x", source="f.yaml")
    assert "f.yaml: invalid YAML at line" in str(info.value)


def test_non_mapping_document() -> None:
    assert errors_of([1, 2]) == ["<root>: expected a mapping, got list"]
