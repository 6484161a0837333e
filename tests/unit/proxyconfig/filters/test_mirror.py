"""RequestMirror config: a share no larger than 1, to a cluster the snapshot has."""

from __future__ import annotations

import copy
from typing import Any

from tulle.proxyconfig import validate
from tulle.proxyconfig.validate import ConfigError

BASE: dict[str, Any] = {
    "listeners": [{"name": "l", "port": 1, "route_table": "rt"}],
    "clusters": [{"name": "c"}, {"name": "shadow"}],
    "route_tables": [{"name": "rt", "virtual_hosts": [
        {"name": "v", "rules": [{"backends": [{"cluster": "c"}]}]}]}],
}
P = "route_tables[0].virtual_hosts[0].rules[0].filters[0]"


def errors(entry: dict[str, Any]) -> list[str]:
    doc = copy.deepcopy(BASE)
    doc["route_tables"][0]["virtual_hosts"][0]["rules"][0]["filters"] = [
        {"type": "RequestMirror", **entry}]
    try:
        validate(doc)
    except ConfigError as exc:
        return [str(e) for e in exc.errors]
    return []


def test_good_mirrors() -> None:
    assert errors({"cluster": "shadow"}) == []
    assert errors({"cluster": "shadow", "numerator": 0}) == []
    assert errors({"cluster": "shadow", "numerator": 1, "denominator": 1000}) == []


def test_bad_mirrors_name_their_field() -> None:
    assert errors({"cluster": "gone"}) == [f"{P}.cluster: no cluster named 'gone'"]
    assert errors({"cluster": "shadow", "numerator": 3, "denominator": 2}) == [
        f"{P}.numerator: must be at most denominator (2)"]
    (got,) = errors({"cluster": "shadow", "denominator": 0})
    assert got.startswith(f"{P}.denominator: ")
    assert errors({"numerator": 1}) == [f"{P}.cluster: required field is missing"]
