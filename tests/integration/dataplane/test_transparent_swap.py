"""A kept-alive connection on a transparent listener across config swaps (issue 7, item 4).

A connection routed by a per-destination rule keeps a routing *key* (its listener and original
destination) and resolves it against the snapshot in force at each request.  The bug this
guards: after any swap that rebuilt the listener's context, the next request on such a
connection answered `503 no cluster named ''` (the connection fell back to the listener's own,
empty, routing).

The proxy is the production `ProxyServer` on loopback sockets; only the kernel's answer to
SO_ORIGINAL_DST is stood in for (no iptables in this test: `tests/e2e/test_transparent.py`
covers the real redirect), so each accepted connection "was going to" 10.9.9.9:80.  Two raw
origins record every request head they receive.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.support.h2peers import H2Client
from tests.support.proxy import RunningProxy, running_proxy
from tests.support.rawhttp import RawClient
from tests.support.rawservers import RawServer, named_origin, raw_server

from tulle.dataplane.listeners import detect

DESTINATION = ("10.9.9.9", 80)


def config(a: int, b: int, *, table_to: str = "a", rule: dict[str, Any] | None = None,
           version: str = "v1") -> dict[str, Any]:
    """A transparent listener with no routing of its own: only its destination rule routes."""
    return {
        "version": version,
        "listeners": [{
            "name": "outbound", "address": "127.0.0.1", "port": 0, "mode": "transparent",
            "protocol": "auto", "passthrough": False,
            "destinations": [rule or {"address": DESTINATION[0], "port": DESTINATION[1],
                                      "route_table": "web"}],
        }],
        "route_tables": [{"name": "web", "virtual_hosts": [
            {"name": "any", "rules": [{"backends": [{"cluster": table_to}]}]}]}],
        "clusters": [
            {"name": "a", "endpoints": [{"address": "127.0.0.1", "port": a}]},
            {"name": "b", "endpoints": [{"address": "127.0.0.1", "port": b}]},
        ],
    }


@pytest.fixture
def redirected(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every accepted connection's original destination is DESTINATION."""
    monkeypatch.setattr(detect, "original_destination", lambda sock: DESTINATION)


@pytest.fixture
async def setup(redirected: None) -> AsyncIterator[tuple[RunningProxy, RawServer, RawServer,
                                                        RawClient]]:
    async with (raw_server(named_origin(b"A")) as a, raw_server(named_origin(b"B")) as b,
                running_proxy(config(a.port, b.port)) as p):
        client = await RawClient.connect(p.port("outbound"))
        try:
            yield p, a, b, client
        finally:
            client.close()


async def get(client: RawClient, path: str) -> tuple[int, bytes]:
    r = await client.request("GET", path)
    return r.status, r.body


async def test_next_request_after_a_swap_still_routes_by_the_destination_rule(
        setup: tuple[RunningProxy, RawServer, RawServer, RawClient]) -> None:
    p, a, b, client = setup
    assert await get(client, "/one") == (200, b"A")
    handle = p.server.listeners["outbound"]
    before = handle.ctx

    # An unrelated change that rebuilds the listener's context (a cluster added).
    cfg = config(a.port, b.port, version="v2")
    cfg["clusters"].append({"name": "c", "endpoints": [{"address": "127.0.0.1", "port": 9}]})
    await p.apply(cfg)
    assert handle.ctx is not before

    assert await get(client, "/two") == (200, b"A")  # same connection, same destination rule
    assert [h.split(b" ")[1] for h in a.requests] == [b"/one", b"/two"]
    assert b.requests == []
    assert p.metric("tulle_proxy_requests_total", listener="outbound", cluster="a",
                    response_code="200") == 2
    assert p.metric("tulle_proxy_requests_total", listener="outbound", response_code="503") == 0


async def test_next_request_follows_a_changed_destination_route(
        setup: tuple[RunningProxy, RawServer, RawServer, RawClient]) -> None:
    p, a, b, client = setup
    assert await get(client, "/one") == (200, b"A")

    await p.apply(config(a.port, b.port, table_to="b", version="v2"))  # the table now says b
    assert await get(client, "/two") == (200, b"B")

    # The rule itself changes: a cluster instead of a route table.
    rule = {"address": DESTINATION[0], "port": DESTINATION[1], "cluster": "a"}
    await p.apply(config(a.port, b.port, table_to="b", rule=rule, version="v3"))
    assert await get(client, "/three") == (200, b"A")

    assert [h.split(b" ")[1] for h in a.requests] == [b"/one", b"/three"]
    assert [h.split(b" ")[1] for h in b.requests] == [b"/two"]
    # One client connection throughout.
    assert p.metric("tulle_proxy_downstream_connections_total", listener="outbound") == 1


async def test_a_destination_no_rule_routes_any_more_gets_no_route(
        setup: tuple[RunningProxy, RawServer, RawServer, RawClient],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "tulle.proxy")
    p, a, b, client = setup
    assert await get(client, "/one") == (200, b"A")
    cfg = config(a.port, b.port, version="v2")
    other = copy.deepcopy(cfg["listeners"][0]["destinations"][0])
    other["port"] = 8080
    cfg["listeners"][0]["destinations"] = [other]
    await p.apply(cfg)

    status, body = await get(client, "/two")
    assert status == 404 and b"no route" in body
    assert len(a.requests) == 1 and b.requests == []
    # A new connection is refused by the new config (no rule, no passthrough).
    fresh = await RawClient.connect(p.port("outbound"))
    try:
        fresh.send("GET", "/three")
        assert await fresh.closed_by_peer()
    finally:
        fresh.close()
    assert p.metric("tulle_proxy_protocol_errors_total", listener="outbound",
                    kind="no_destination") == 1
    refused = [r.getMessage() for r in caplog.records if "refused an outbound" in r.getMessage()]
    assert len(refused) == 1 and "REGISTRY_ONLY" in refused[0], refused


async def test_an_http2_connection_follows_swaps_by_its_destination_and_is_told_to_go_away(
        redirected: None) -> None:
    async with (raw_server(named_origin(b"A")) as a, raw_server(named_origin(b"B")) as b,
                running_proxy(config(a.port, b.port)) as p):
        client = await H2Client.connect(p.port("outbound"))
        try:
            async with asyncio.timeout(10):
                r = await client.request("GET", "/one")
                assert (r.status, bytes(r.body)) == (200, b"A")
                await p.apply(config(a.port, b.port, table_to="b", version="v2"))
                r = await client.request("GET", "/two")
                assert (r.status, bytes(r.body)) == (200, b"B")
                assert client.goaway is None

                cfg = config(a.port, b.port, version="v3")
                cfg["listeners"][0]["destinations"][0]["port"] = 8080  # no rule for :80 now
                await p.apply(cfg)
                r = await client.request("GET", "/three")
                assert r.status == 404
                await client.closed.wait()  # GOAWAY, then closed once the stream is done
                assert client.goaway == 0  # NO_ERROR
        finally:
            client.close()
    assert [h.split(b" ")[1] for h in a.requests] == [b"/one"]
    assert [h.split(b" ")[1] for h in b.requests] == [b"/two"]
