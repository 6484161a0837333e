"""Routing by headers, query parameters, method and path regex through a real proxy (HTTP/1.1
and h2c), per-route state across config swaps, and a route regex the proxy refuses NACKed with
its path over the control-plane stream.

Each rule stamps the request with its name (a RequestHeaderModifier), and the origin (aiohttp
/echo) echoes the headers it received: the test reads which route the proxy chose from what
the origin saw, not from the proxy's own account.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from tests.support.h2peers import H2Client
from tests.support.newer_cp import agent_on_v1, config
from tests.support.proxy import RunningProxy, running_proxy

from tulle.proxyconfig.stream import Nack


def stamped(name: str, *matches: dict[str, Any], cluster: str = "app") -> dict[str, Any]:
    return {"name": name, "matches": list(matches), "backends": [{"cluster": cluster}],
            "filters": [{"type": "RequestHeaderModifier",
                         "set": [{"name": "x-route", "value": name}]}]}


RULES = [
    stamped("canary", {"path": {"value": "/echo"},
                       "headers": [{"name": "X-Canary", "value": "always"}]}),
    stamped("mobile", {"path": {"value": "/echo"},
                       "headers": [{"type": "RegularExpression", "name": "user-agent",
                                    "value": ".*Mobile.*"}]}),
    stamped("debug", {"path": {"value": "/echo"},
                      "query_params": [{"name": "debug", "value": "on"}]}),
    stamped("writes", {"path": {"value": "/echo"}, "method": "POST"}),
    stamped("versioned", {"path": {"type": "RegularExpression", "value": "/echo/v[0-9]+/.*"}}),
    stamped("default", {"path": {"value": "/"}}),
]


def mesh(origin: int, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "listeners": [{"name": "out", "port": 0, "protocol": "auto", "route_table": "rt"}],
        "clusters": [{"name": "app", "endpoints": [{"address": "127.0.0.1", "port": origin}]},
                     {"name": "app2", "endpoints": [{"address": "127.0.0.1", "port": origin}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": rules}]}],
    }


async def h1(p: RunningProxy, method: str, path: str, headers: dict[str, str]) -> str:
    async with aiohttp.ClientSession() as s, s.request(method, p.url("out", path),
                                                       headers=headers) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["headers"]["x-route"])


async def h2(p: RunningProxy, method: str, path: str, headers: dict[str, str]) -> str:
    c = await H2Client.connect(p.port())
    try:
        fields = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        r = await asyncio.wait_for(c.request(method, path, fields), 10)
    finally:
        c.close()
    assert r.status == 200, bytes(r.body)
    return str(json.loads(bytes(r.body))["headers"]["x-route"])


CASES = [
    ("GET", "/echo", {}, "default"),
    ("GET", "/echo", {"x-canary": "always"}, "canary"),
    ("GET", "/echo", {"X-CANARY": "always", "User-Agent": "x Mobile y"}, "canary"),  # order
    ("GET", "/echo", {"x-canary": "sometimes"}, "default"),
    ("GET", "/echo", {"user-agent": "Mozilla/5.0 (iPhone) Mobile/15E148"}, "mobile"),
    ("GET", "/echo?debug=on", {}, "debug"),
    ("GET", "/echo?debug=off&debug=on", {}, "default"),  # the first value counts
    ("POST", "/echo", {}, "writes"),
    ("POST", "/echo?debug=on", {}, "writes"),  # a method match outranks query matches
    ("GET", "/echo/v2/items", {}, "versioned"),
    ("GET", "/echo/vx/items", {}, "default"),
]


@pytest.mark.parametrize("proto", ["h1", "h2"])
async def test_requests_are_routed_by_headers_query_method_and_path_regex(
        origin: int, proto: str) -> None:
    send = h1 if proto == "h1" else h2
    async with running_proxy(mesh(origin, RULES)) as p:
        got = [await send(p, m, path, hdrs) for m, path, hdrs, _ in CASES]
        assert got == [want for *_, want in CASES]
        assert p.metric("tulle_proxy_route_requests_total", route="default") == 4
        assert p.metric("tulle_proxy_route_requests_total", route="canary") == 2
        assert p.metric("tulle_proxy_route_requests_total", route_table="rt") == len(CASES)


@pytest.mark.parametrize("proto", ["h1", "h2"])
async def test_routes_see_the_forwarding_headers_the_proxy_adds(origin: int, proto: str) -> None:
    """x-forwarded-for and x-request-id are set before routing (as in Envoy), so a route can
    match on them as the upstream will receive them."""
    send = h1 if proto == "h1" else h2
    rules = [stamped("local", {"headers": [{"name": "x-forwarded-for", "value": "127.0.0.1"}]}),
             stamped("traced", {"headers": [{"type": "RegularExpression", "name": "x-request-id",
                                             "value": "[0-9a-f-]{36}"}]}),
             stamped("default", {"path": {"value": "/"}})]
    async with running_proxy(mesh(origin, rules)) as p:
        assert await send(p, "GET", "/echo", {}) == "local"
        assert await send(p, "GET", "/echo", {"x-forwarded-for": "10.1.1.1"}) == "traced"


def _routes(p: RunningProxy) -> dict[str, Any]:
    router = p.server.listeners["out"].ctx.router
    assert router is not None
    return router.routes


async def test_route_state_survives_a_swap_of_another_route_and_resets_when_it_changes(
        origin: int) -> None:
    rules = [stamped("canary", {"headers": [{"name": "x-canary", "value": "1"}]}),
             {"matches": [{"path": {"value": "/"}}], "backends": [{"cluster": "app"}]}]
    async with running_proxy(mesh(origin, rules)) as p:
        for hdrs in ({"x-canary": "1"}, {"x-canary": "1"}, {}):
            async with aiohttp.ClientSession() as s, s.get(p.url("out", "/echo"),
                                                           headers=hdrs) as r:
                assert r.status == 200
        canary = _routes(p)["canary"]
        unnamed = _routes(p)["rt/any/1"]
        assert (canary.requests.value, unnamed.requests.value) == (2, 1)

        # Another route changes (the unnamed catch-all's backend): the canary is the same
        # object with its count, the changed unnamed rule starts afresh.
        rules[1] = {"matches": [{"path": {"value": "/"}}], "backends": [{"cluster": "app2"}]}
        await p.apply(mesh(origin, rules))
        assert _routes(p)["canary"] is canary
        assert p.metric("tulle_proxy_route_requests_total", route="canary") == 2
        assert p.metric("tulle_proxy_route_requests_total", route="rt/any/1") == 0

        # The canary itself changes (its backend), keeping its name: its state carries over.
        rules[0] = dict(rules[0], backends=[{"cluster": "app2"}])
        await p.apply(mesh(origin, rules))
        assert _routes(p)["canary"] is not canary
        assert _routes(p)["canary"].state is canary.state
        async with aiohttp.ClientSession() as s, s.get(p.url("out", "/echo"),
                                                       headers={"x-canary": "1"}) as r:
            assert (await r.json())["headers"]["x-route"] == "canary"
        assert p.metric("tulle_proxy_route_requests_total", route="canary") == 3

        # Renamed, it is another route: fresh state, and the old series is gone.
        rules[0] = dict(rules[0], name="canary-v2")
        await p.apply(mesh(origin, rules))
        assert _routes(p)["canary-v2"].state is not canary.state
        assert p.metric("tulle_proxy_route_requests_total", route="canary-v2") == 0
        assert "route=\"canary\"" not in p.server.metrics.registry.render()


async def test_a_route_regex_the_proxy_cannot_run_safely_is_nacked_with_its_path(
        origin: int) -> None:
    async with agent_on_v1(origin) as a:
        cp, proxy, listen = a.cp, a.proxy, a.listen
        v2 = config("v2", listen, origin)
        v2["route_tables"][0]["virtual_hosts"][0]["rules"][0]["matches"] = [
            {"path": {"type": "RegularExpression", "value": "/(a+)+$"}},
            {"headers": [{"type": "RegularExpression", "name": "x", "value": "[unclosed"}]},
            # Admitted before ADR 0021: 0.5 s of event loop per 64 KiB user-agent.
            {"headers": [{"type": "RegularExpression", "name": "user-agent",
                          "value": ".*a?a?a?a?a?a?a?a?a"}]}]
        nack = await cp.send({"type": "snapshot", "version": "v2", "config": v2})
        assert isinstance(nack, Nack) and nack.version == "v2"
        where = "route_tables[0].virtual_hosts[0].rules[0].matches"
        assert nack.paths == [f"{where}[0].path.value", f"{where}[1].headers[0].value",
                              f"{where}[2].headers[0].value"]
        assert "regular expression refused: only a single character" in nack.reason
        assert "ways to backtrack around a repetition of unbounded count" in nack.reason
        # The stream stays up and v1 keeps serving.
        assert cp.connections == 1 and proxy.config is not None
        assert proxy.config.version == "v1"
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{listen}/echo") as r:
            assert r.status == 200
