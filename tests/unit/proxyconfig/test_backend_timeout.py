"""`RouteRule.backend_timeout_ms`: a per-try limit no longer than the rule's own timeout, and
the route runtime asks each try for it (a rule without one asks nothing)."""

from __future__ import annotations

import copy
from typing import Any

from tulle.dataplane.routing.router import Route
from tulle.proxyconfig import validate
from tulle.proxyconfig.model import BackendRef, RouteRule
from tulle.proxyconfig.validate import ConfigError

BASE: dict[str, Any] = {
    "listeners": [{"name": "l", "port": 1, "route_table": "rt"}],
    "clusters": [{"name": "c"}],
    "route_tables": [{"name": "rt", "virtual_hosts": [
        {"name": "v", "rules": [{"backends": [{"cluster": "c"}]}]}]}],
}


def errors(**rule: Any) -> list[str]:
    doc = copy.deepcopy(BASE)
    doc["route_tables"][0]["virtual_hosts"][0]["rules"][0].update(rule)
    try:
        validate(doc)
    except ConfigError as exc:
        return [str(e) for e in exc.errors]
    return []


def test_per_try_no_longer_than_the_request() -> None:
    assert errors(backend_timeout_ms=500, timeout_ms=1000) == []
    assert errors(backend_timeout_ms=500) == []
    assert errors(backend_timeout_ms=5000, timeout_ms=0) == []  # 0: no request limit
    assert errors(backend_timeout_ms=2000, timeout_ms=1000) == [
        "route_tables[0].virtual_hosts[0].rules[0].backend_timeout_ms: must not be longer "
        "than timeout_ms (1000)"]


def test_the_route_asks_each_try_for_its_deadline_only_when_it_has_one() -> None:
    plain = Route("r", RouteRule(backends=[BackendRef(cluster="c")]), 15_000)
    assert plain.attempt is None and not plain.special
    timed = Route("r", RouteRule(backends=[BackendRef(cluster="c")], backend_timeout_ms=250),
                  15_000)
    assert timed.special and timed.attempt is not None
    assert timed.attempt.per_try_timeout == 0.25
