"""Filter chains on a transparent listener: chosen by original destination (port, CIDR), a
kept-alive connection routes by its chain's *name* across config swaps, and what no chain
takes goes to the passthrough or is refused and counted.

As in test_transparent_swap.py, only the kernel's answer to SO_ORIGINAL_DST is stood in for
(tests/e2e covers real iptables redirects); sockets, origins and the proxy are real."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.support.proxy import RunningProxy, running_proxy
from tests.support.rawhttp import RawClient
from tests.support.rawservers import RawServer, named_origin, raw_server

from tulle.dataplane.listeners import detect

DESTINATION = ["10.9.9.9", 80]


def greeter(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> Any:
    async def run() -> None:
        w.write(b"220 hello from the server\r\n")  # a server-first protocol
        await w.drain()
        srv.requests.append(await r.readline())

    return run()


def config(a: int, b: int, db: int, *, web_to: str = "a", web_name: str = "web",
           version: str = "v1", passthrough: bool = False) -> dict[str, Any]:
    return {
        "version": version,
        "listeners": [{
            "name": "outbound", "port": 0, "mode": "transparent", "passthrough": passthrough,
            "filter_chains": [
                {"name": web_name, "match": {"destination": ["10.9.0.0/16"],
                                             "destination_port": 80},
                 "route_table": "web"},
                {"name": "wide", "match": {"destination": ["10.0.0.0/8"],
                                           "destination_port": 80},
                 "protocol": "http1", "cluster": "b"},
                {"name": "db", "match": {"destination_port": 5432}, "protocol": "tcp",
                 "cluster": "db"},
            ],
        }],
        "route_tables": [{"name": "web", "virtual_hosts": [
            {"name": "any", "rules": [{"backends": [{"cluster": web_to}]}]}]}],
        "clusters": [{"name": n, "endpoints": [{"address": "127.0.0.1", "port": port}]}
                     for n, port in (("a", a), ("b", b), ("db", db))],
    }


@pytest.fixture
async def setup(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[
        tuple[RunningProxy, RawServer, RawServer, RawServer]]:
    # ChainAccept looks the original destination up through `detect.Deciding`.
    monkeypatch.setattr(detect, "original_destination", lambda sock: tuple(DESTINATION))
    async with (raw_server(named_origin(b"A")) as a, raw_server(named_origin(b"B")) as b,
                raw_server(greeter) as db,
                running_proxy(config(a.port, b.port, db.port)) as p):
        yield p, a, b, db
    DESTINATION[:] = ["10.9.9.9", 80]


async def get(client: RawClient, path: str) -> tuple[int, bytes]:
    r = await client.request("GET", path)
    return r.status, r.body


async def test_the_longest_destination_prefix_chooses_the_chain(
        setup: tuple[RunningProxy, RawServer, RawServer, RawServer]) -> None:
    p, a, b, db = setup
    client = await RawClient.connect(p.port("outbound"))
    assert await get(client, "/in-16") == (200, b"A")
    client.close()
    DESTINATION[:] = ["10.200.0.1", 80]
    client = await RawClient.connect(p.port("outbound"))
    assert await get(client, "/in-8") == (200, b"B")
    client.close()
    DESTINATION[:] = ["192.0.2.1", 80]  # no chain, no default, no passthrough: refused
    r, w = await asyncio.open_connection("127.0.0.1", p.port("outbound"))
    assert await asyncio.wait_for(r.read(), 5) == b""
    w.close()
    assert p.metric("tulle_proxy_protocol_errors_total", kind="no_filter_chain") == 1


async def test_a_port_only_tcp_chain_relays_without_reading_first(
        setup: tuple[RunningProxy, RawServer, RawServer, RawServer]) -> None:
    p, a, b, db = setup
    DESTINATION[:] = ["10.1.1.1", 5432]
    r, w = await asyncio.open_connection("127.0.0.1", p.port("outbound"))
    # The server speaks first: the proxy must not wait for client bytes to choose.
    assert await asyncio.wait_for(r.readline(), 5) == b"220 hello from the server\r\n"
    w.write(b"QUIT\r\n")
    await w.drain()
    async with asyncio.timeout(5):
        while not db.requests:
            await asyncio.sleep(0.01)
    assert db.requests == [b"QUIT\r\n"]
    w.close()


async def test_a_kept_alive_connection_follows_its_chain_across_swaps(
        setup: tuple[RunningProxy, RawServer, RawServer, RawServer]) -> None:
    p, a, b, db = setup
    client = await RawClient.connect(p.port("outbound"))
    assert await get(client, "/one") == (200, b"A")
    handle = p.server.listeners["outbound"]
    before = handle.ctx

    await p.apply(config(a.port, b.port, db.port, web_to="b", version="v2"))
    assert handle.ctx is not before
    assert await get(client, "/two") == (200, b"B")  # same connection, the chain's new table

    # The chain is renamed: this connection's key names nothing now (404, as for a
    # destination rule that went away); a new connection meets the renamed chain.
    await p.apply(config(a.port, b.port, db.port, web_name="web2", version="v3"))
    status, body = await get(client, "/three")
    assert status == 404 and b"no route" in body
    client.close()
    client = await RawClient.connect(p.port("outbound"))
    assert await get(client, "/four") == (200, b"A")
    assert p.metric("tulle_proxy_protocol_detected_total", protocol="chain:web2") == 1
    assert p.metric("tulle_proxy_downstream_connections_total", listener="outbound") == 2
    assert [h.split(b" ")[1] for h in a.requests] == [b"/one", b"/four"]
    assert [h.split(b" ")[1] for h in b.requests] == [b"/two"]
    client.close()


async def test_what_no_chain_takes_goes_to_the_passthrough(
        setup: tuple[RunningProxy, RawServer, RawServer, RawServer]) -> None:
    p, a, b, db = setup
    await p.apply(config(a.port, b.port, db.port, passthrough=True, version="v2"))
    DESTINATION[:] = ["127.0.0.1", b.port]  # "was going to" origin B directly
    client = await RawClient.connect(p.port("outbound"))
    assert await get(client, "/direct") == (200, b"B")
    client.close()
    assert p.metric("tulle_proxy_protocol_detected_total", protocol="passthrough") == 1


async def test_a_tcp_chain_runs_its_own_network_filters(
        setup: tuple[RunningProxy, RawServer, RawServer, RawServer]) -> None:
    p, a, b, db = setup
    cfg = config(a.port, b.port, db.port, version="v2")
    cfg["listeners"][0]["filter_chains"].append(
        {"name": "guarded", "match": {"destination_port": 6379}, "protocol": "tcp",
         "cluster": "db", "network_filters": [{"type": "source_ip", "deny": ["127.0.0.0/8"]}]})
    await p.apply(cfg)
    DESTINATION[:] = ["10.1.1.1", 6379]
    r, w = await asyncio.open_connection("127.0.0.1", p.port("outbound"))
    try:
        async with asyncio.timeout(5):
            assert await r.read() == b""  # refused before anything was dialled
    except ConnectionError:
        pass
    w.close()
    assert p.metric("tulle_proxy_network_filter_rejections_total", filter="source_ip",
                    reason="denied") == 1
    assert db.requests == []
    DESTINATION[:] = ["10.1.1.1", 5432]  # the unguarded chain is unaffected
    r, w = await asyncio.open_connection("127.0.0.1", p.port("outbound"))
    assert await asyncio.wait_for(r.readline(), 5) == b"220 hello from the server\r\n"
    w.close()
