"""Which withheld features a config uses (ADR 0122): a field away from its default, or an
item a feature drops; a config at its defaults uses none."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from tulle.proxyconfig.features import BY_NAME, FEATURES, withheld_from
from tulle.proxyconfig.features_in_use import default_at, in_use, uses, uses_of
from tulle.proxyconfig.validate import validate


def config(**extra: Any) -> dict[str, Any]:
    doc = msgspec.to_builtins(validate({
        "version": "v1",
        "listeners": [{"name": "in", "port": 1, "protocol": "http1", "route_table": "rt"}],
        "clusters": [{"name": "app", "endpoints": [{"address": "127.0.0.1", "port": 2}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": [
            {"matches": [{"path": {"value": "/"}}], "backends": [{"cluster": "app"}]}]}]}],
        **extra}))
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("path", [p for f in FEATURES for p in f.paths])
def test_every_feature_path_has_a_default_in_the_model(path: str) -> None:
    default_at(path)  # raises KeyError for a path the model does not have


def test_a_config_at_its_defaults_uses_no_feature_it_does_not_set() -> None:
    assert in_use(config(), withheld_from([])) == ()


def test_a_field_set_away_from_its_default_is_in_use() -> None:
    doc = config(settings={"drain_propagation_ms": 0})
    assert uses(doc, BY_NAME["drain-propagation"])  # 0 is a value (none), not null (unset)
    doc["listeners"][0]["sources"] = ["10.0.0.1/32"]
    assert uses(doc, BY_NAME["listener-sources"])


def test_an_item_a_feature_drops_is_in_use_and_one_it_does_not_use_is_not() -> None:
    doc = config()
    rule = doc["route_tables"][0]["virtual_hosts"][0]["rules"][0]
    rule["filters"] = [{"type": "RequestHeaderModifier", "set": [{"name": "x", "value": "1"}]}]
    assert not uses(doc, BY_NAME["session-persistence"])
    rule["filters"].append({"type": "SessionPersistence", "name": "sid"})
    assert uses(doc, BY_NAME["session-persistence"])
    assert [f.name for f in in_use(doc, [BY_NAME["session-persistence"],
                                         BY_NAME["drain-propagation"]])] == [
        "session-persistence"]


def test_each_use_is_counted_once_per_occurrence() -> None:
    """What apply compares (ADR 0125): one more sticky rule is one more use, and a field's
    value is a use of its own."""
    doc = config(settings={"drain_propagation_ms": 0})
    rule = doc["route_tables"][0]["virtual_hosts"][0]["rules"][0]
    rule["filters"] = [{"type": "SessionPersistence", "name": "sid"}]
    doc["route_tables"][0]["virtual_hosts"][0]["rules"].append(dict(rule))
    (sticky,) = uses_of(doc, BY_NAME["session-persistence"]).items()
    assert sticky[1] == 2 and sticky[0].startswith("route_tables[].virtual_hosts[].rules[]"
                                                   ".filters[]={")
    assert uses_of(doc, BY_NAME["drain-propagation"]) == {"settings.drain_propagation_ms=0": 1}
    assert uses_of(config(), BY_NAME["drain-propagation"]) == {}


def test_a_network_filter_a_proxy_lacking_it_refuses_is_a_use() -> None:
    """`network-authorization` is never withheld; a config with its filter, on a listener or
    in a filter chain, is one a proxy without it refuses."""
    feature = BY_NAME["network-authorization"]
    doc = config()
    assert not uses(doc, feature)
    authz = {"type": "authz", "policies": []}
    doc["listeners"][0]["network_filters"] = [{"type": "source_ip", "allow": []}]
    assert not uses(doc, feature)
    doc["listeners"][0]["network_filters"].append(authz)
    assert uses(doc, feature)
    doc["listeners"][0]["network_filters"] = []
    doc["listeners"][0]["filter_chains"] = [{"name": "c", "network_filters": [authz]}]
    assert uses(doc, feature)
    assert not uses(doc, BY_NAME["network-rate-limit"])
