"""`RouteRule.retry` and `Cluster.retry_budget`: bad values refused with their field paths."""

from __future__ import annotations

import copy
from typing import Any

from tulle.proxyconfig import validate
from tulle.proxyconfig.validate import ConfigError

BASE: dict[str, Any] = {
    "listeners": [{"name": "l", "port": 1, "route_table": "rt"}],
    "clusters": [{"name": "c"}],
    "route_tables": [{"name": "rt", "virtual_hosts": [
        {"name": "v", "rules": [{"backends": [{"cluster": "c"}]}]}]}],
}
RULE = "route_tables[0].virtual_hosts[0].rules[0].retry"


def errors(retry: Any = None, budget: Any = None) -> list[str]:
    doc = copy.deepcopy(BASE)
    if retry is not None:
        doc["route_tables"][0]["virtual_hosts"][0]["rules"][0]["retry"] = retry
    if budget is not None:
        doc["clusters"][0]["retry_budget"] = budget
    try:
        validate(doc)
    except ConfigError as exc:
        return [str(e) for e in exc.errors]
    return []


def test_defaults_are_valid() -> None:
    assert errors({}, {}) == []


def test_each_bad_value_names_its_path() -> None:
    assert any("retry_on" in e for e in errors({"retry_on": ["sometimes"]}))
    assert any("num_retries" in e for e in errors({"num_retries": 11}))
    assert any("percent" in e for e in errors(budget={"percent": 101}))
    assert any("ttl_ms" in e for e in errors(budget={"ttl_ms": 10}))
    assert any("grpc_statuses" in e for e in errors({"grpc_statuses": [0]}))


def test_contradictions_are_refused() -> None:
    assert errors({"backoff_base_ms": 100, "backoff_max_ms": 50}) == [
        f"{RULE}.backoff_max_ms: must not be shorter than backoff_base_ms (100)"]
    assert errors({"status_codes": [409]}) == [
        f"{RULE}.status_codes: set, but retry_on does not list retriable-status-codes"]
    assert errors({"retry_on": ["5xx", "5xx"]}) == [f"{RULE}.retry_on: lists a condition twice"]
