"""Validation reports every error with its field path, and builds the config only when clean."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import pytest

from tulle.proxyconfig import ConfigError, load_text, validate
from tulle.proxyconfig.validate import errors_in


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


# -- tagged unions (the shape of filter configs: one struct per `type`) ------------------------

class _AddHeader(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type",
                 tag="add_header"):
    name: Annotated[str, msgspec.Meta(min_length=1)]
    value: str = ""


class _Delay(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type",
             tag="delay"):
    delay_ms: Annotated[int, msgspec.Meta(ge=0)]


class _Rule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    filters: list[_AddHeader | _Delay] = msgspec.field(default_factory=list)


def tagged_errors(raw: Any) -> list[str]:
    return [str(e) for e in errors_in(raw, _Rule)]


def test_errors_inside_a_tagged_union_carry_the_path_of_the_chosen_variant() -> None:
    assert tagged_errors({"filters": [
        {"type": "add_header", "name": "x-a"},
        {"type": "delay", "delay_ms": -5},
        {"type": "add_header", "name": "", "colour": "red"},
    ]}) == [
        "filters[1].delay_ms: must be >= 0, got -5",
        "filters[2].colour: unknown field",
        "filters[2].name: must be at least 1 characters",
    ]


def test_a_tagged_union_names_the_missing_or_unknown_tag() -> None:
    assert tagged_errors({"filters": [{"name": "x"}, {"type": "rewrite"}, "delay"]}) == [
        "filters[0].type: required field is missing (one of 'add_header', 'delay')",
        "filters[1].type: must be one of 'add_header', 'delay', got 'rewrite'",
        "filters[2]: expected a mapping with type: 'add_header' or a mapping with type: 'delay'",
    ]
    assert tagged_errors({"filters": [{"type": "delay", "delay_ms": 3}]}) == []


def _with_matches(*matches: dict[str, Any]) -> dict[str, Any]:
    raw = good()
    raw["route_tables"][0]["virtual_hosts"][0]["rules"][0]["matches"] = list(matches)
    return raw


def test_route_matches_on_headers_query_and_method_build() -> None:
    cfg = validate(_with_matches({
        "path": {"type": "RegularExpression", "value": "/api/v[0-9]+/.*"},
        "headers": [{"name": "X-Canary", "value": "1"},
                    {"type": "RegularExpression", "name": "user-agent", "value": ".*Mobile.*"}],
        "query_params": [{"name": "debug", "value": "on"}],
        "method": "POST"}))
    m = cfg.route_tables[0].virtual_hosts[0].rules[0].matches[0]
    assert (m.method, [h.name for h in m.headers], m.query_params[0].value) == (
        "POST", ["X-Canary", "user-agent"], "on")


def test_unsafe_or_malformed_regexes_and_repeated_names_are_refused_with_paths() -> None:
    p = "route_tables[0].virtual_hosts[0].rules[0].matches"
    assert errors_of(_with_matches(
        {"path": {"type": "RegularExpression", "value": "(a+)+"}},
        {"headers": [{"type": "RegularExpression", "name": "x", "value": "(x"},
                     {"name": "X", "value": "1"}],
         "query_params": [{"type": "RegularExpression", "name": "q", "value": r"(\w)\1"},
                          {"name": "q", "value": "2"}]})) == [
        f"{p}[0].path.value: regular expression refused: only a single character, class or "
        "`.` may repeat; a group may only be optional (`(...)?`)",
        f"{p}[1].headers[0].value: regular expression refused: not a regular expression: "
        "missing ), unterminated subpattern at position 0",
        f"{p}[1].headers[1].name: duplicate header 'X'",
        f"{p}[1].query_params[0].value: regular expression refused: backreferences are not "
        "supported",
        f"{p}[1].query_params[1].name: duplicate query parameter 'q'"]


def test_a_regex_with_a_long_counted_run_after_a_backtracking_one_is_refused_with_its_path(
        ) -> None:
    """ADR 0101: `a*a{0,65535}` was taken and cost 1.4 s of event loop per 64 KiB header."""
    p = "route_tables[0].virtual_hosts[0].rules[0].matches"
    errors = errors_of(_with_matches(
        {"headers": [{"type": "RegularExpression", "name": "x-a", "value": "a*a{0,65535}"}]},
        {"path": {"type": "RegularExpression", "value": ".*a[^y]{0,65535}y"}}))
    assert [e.split(": ", 1)[0] for e in errors] == [f"{p}[0].headers[0].value",
                                                     f"{p}[1].path.value"]
    assert all("nor by more than 32 bytes" in e for e in errors), errors


def test_a_bad_method_or_header_name_is_a_structural_error() -> None:
    errors = errors_of(_with_matches({"method": "get", "headers": [{"name": "a b", "value": ""}]}))
    p = "route_tables[0].virtual_hosts[0].rules[0].matches[0]"
    assert errors[0].startswith(f"{p}.headers[0].name: must match")
    assert errors[1].startswith(f"{p}.method: ")


def test_cluster_limits_are_refused_on_a_tcp_cluster_whose_relay_does_not_take_them() -> None:
    limits = {"max_connections": 10}
    assert errors_of({"clusters": [{"name": "db", "protocol": "tcp", "limits": limits}]}) == [
        "clusters[0].limits: not enforced on a tcp cluster (the TCP relay takes no cluster "
        "limits yet)"]
    cfg = validate({"clusters": [{"name": "web", "protocol": "http1", "limits": limits}]})
    assert cfg.clusters[0].limits is not None and cfg.clusters[0].limits.max_connections == 10


def test_an_address_is_what_ipaddress_calls_one_without_importing_it() -> None:
    """ADR 0068: `_is_ip` answers as `ipaddress.ip_address` does (zones included), through
    `inet_pton` for everything without a zone."""
    import ipaddress
    import random

    from tulle.proxyconfig.validate import _is_ip

    def reference(text: str) -> bool:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            return False
        return True

    cases = ["1.2.3.4", "01.2.3.4", "1.2.3.04", "256.1.1.1", "1.2.3", " 1.2.3.4", "1.2.3.4\n",
             "::", "::1", "fe80::1%eth0", "fe80::1%", "1.2.3.4%eth0", "::ffff:1.2.3.4",
             "1::2::3", "12345::", "", "localhost", "0x1.1.1.1", "\u0661.2.3.4", "1.2.3.4\0"]
    rnd = random.Random(7)
    cases += ["".join(rnd.choice("0123456789abcdef:.%") for _ in range(rnd.randint(1, 16)))
              for _ in range(20000)]
    assert [c for c in cases if _is_ip(c) != reference(c)] == []


def test_listener_sources_are_addresses_on_a_listener_that_checks_them() -> None:
    raw = good()
    raw["listeners"][0]["sources"] = ["10.0.0.8", "nonsense"]
    errs = errors_of(raw)
    assert any(e.startswith("listeners[0].sources[1]") for e in errs), errs
    assert any(e.startswith("listeners[0].sources:") and "transparent" in e
               for e in errs), errs  # an explicit listener without chains: not checked there
    raw["listeners"][0].update(sources=["10.0.0.0/24"], mode="transparent")
    assert validate(raw).listeners[0].sources == ["10.0.0.0/24"]


def test_a_refused_destination_names_nothing_else() -> None:
    """`Destination.refuse` (ADR 0114): a refusing destination is complete on its own, and one
    that also names a route table or a cluster is a contradiction, refused with its path."""
    raw = good()
    raw["listeners"][0] = {"name": "out", "port": 15001, "mode": "transparent",
                           "passthrough": True, "destinations": [
                               {"address": "10.232.0.4", "refuse": True}]}
    assert validate(raw).listeners[0].destinations[0].refuse
    raw["listeners"][0]["destinations"][0]["cluster"] = "web"
    assert errors_of(raw) == ["listeners[0].destinations[0].refuse: a refused destination "
                              "names no route_table or cluster"]
