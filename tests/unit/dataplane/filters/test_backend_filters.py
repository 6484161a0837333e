"""`backends[].filters`: a backend's own header modifiers join the rule's only for requests sent
to that backend; config refuses what a backend cannot take."""

from __future__ import annotations

import copy
from typing import Any

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.http.chain import ChainRun
from tulle.dataplane.routing.router import Route
from tulle.proxyconfig import validate
from tulle.proxyconfig.filters import RequestHeaderModifier
from tulle.proxyconfig.filters.headers import HTTPHeader
from tulle.proxyconfig.model import BackendRef, RouteRule
from tulle.proxyconfig.validate import ConfigError


class Port:
    def filter_error(self, name: str) -> None:
        raise AssertionError(name)


def _set(name: str, value: str) -> RequestHeaderModifier:
    return RequestHeaderModifier(set=[HTTPHeader(name=name, value=value)])


def test_each_backend_gets_the_rules_filters_and_its_own() -> None:
    rule = RouteRule(filters=[_set("x-rule", "1")], backends=[
        BackendRef(cluster="v1", weight=1),
        BackendRef(cluster="v2", weight=1, filters=[_set("x-canary", "true")])])
    route = Route("r", rule, 1000)
    assert route.special and route.backend_chains is not None
    assert set(route.backend_chains) == {"v2"}
    chain = route.backend_chains["v2"]
    assert chain is not None
    head = RequestHead(b"GET", b"/", b"a", b"http", [])
    p = Port()
    assert ChainRun(chain, head, p, p).request_head()  # type: ignore[arg-type]
    assert head.headers == [(b"x-rule", b"1"), (b"x-canary", b"true")]
    assert route.chain is not None and len(route.chain.factories) == 1


def test_a_rule_without_backend_filters_has_no_backend_chains() -> None:
    route = Route("r", RouteRule(backends=[BackendRef(cluster="v1")]), 1000)
    assert route.backend_chains is None and not route.special


BASE: dict[str, Any] = {
    "listeners": [{"name": "l", "port": 1, "route_table": "rt"}],
    "clusters": [{"name": "c"}, {"name": "d"}],
    "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "v", "rules": [{}]}]}],
}
R = "route_tables[0].virtual_hosts[0].rules[0]"


def errors(backends: list[Any]) -> list[str]:
    doc = copy.deepcopy(BASE)
    doc["route_tables"][0]["virtual_hosts"][0]["rules"][0]["backends"] = backends
    try:
        validate(doc)
    except ConfigError as exc:
        return [str(e) for e in exc.errors]
    return []


def test_backend_filters_are_header_modifiers_once_per_cluster() -> None:
    mod = {"type": "RequestHeaderModifier", "add": [{"name": "x", "value": "1"}]}
    assert errors([{"cluster": "c"}, {"cluster": "d", "filters": [mod]}]) == []
    assert errors([{"cluster": "c", "filters": [{"type": "URLRewrite", "hostname": "a"}]}]) == [
        f"{R}.backends[0].filters[0].type: only RequestHeaderModifier and "
        "ResponseHeaderModifier are taken on a backend"]
    assert errors([{"cluster": "c"}, {"cluster": "c", "filters": [mod]}]) == [
        f"{R}.backends[1].cluster: 'c' appears twice among backends, and a backend of this "
        "rule has filters"]
    assert errors([{"cluster": "c", "filters": [{"type": "RequestHeaderModifier",
                                                   "remove": ["host"]}]}]) == [
        f"{R}.backends[0].filters[0].remove[0]: 'host' is framed or routed by the proxy and "
        "may not be modified"]
