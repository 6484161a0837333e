"""Deltas that do not fit the snapshot they extend, sent to a real proxy's agent over the
stream: each is a NACK naming where in the delta it is wrong, the stream stays up and the last
good config keeps serving.  A delta the control plane's `diff` never writes (a name twice, two
patches for one resource, two additions at one position) is refused, never half-applied by
"last one wins"."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.support.newer_cp import AgentOnV1, agent_on_v1, get
from tests.support.proxy import free_port

from tulle.proxyconfig.stream import Ack, Nack, Pong


@pytest.fixture
async def stream(origin: int) -> AsyncIterator[AgentOnV1]:
    async with agent_on_v1(origin) as a:
        yield a


def vhost(name: str, prefix: str) -> dict[str, Any]:
    return {"name": name, "rules": [{"matches": [{"path": {"value": prefix}}],
                                     "backends": [{"cluster": "app"}]}]}


def cluster(name: str, port: int) -> dict[str, Any]:
    return {"name": name, "endpoints": [{"address": "127.0.0.1", "port": port}]}


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    ("patch for a missing table",
     {"virtual_hosts": [{"route_table": "nope", "upsert": [vhost("x", "/x")]}]},
     "delta.virtual_hosts[0].route_table", "virtual hosts for unknown RouteTable 'nope'"),
    ("remove an unknown virtual host",
     {"virtual_hosts": [{"route_table": "rt", "remove": ["ghost"]}]},
     "delta.virtual_hosts[0].remove[0]", "cannot remove unknown VirtualHost"),
    ("position out of range",
     {"clusters": {"upsert": [cluster("b", 1)], "at": {"b": 7}}},
     "delta.clusters.at.b", "position 7 out of range"),
    ("negative position",
     {"clusters": {"upsert": [cluster("b", 1)], "at": {"b": -1}}},
     "delta.clusters.at.b", "position -1 out of range"),
    ("two additions at one position",
     {"clusters": {"upsert": [cluster("b", 1), cluster("c", 1)], "at": {"b": 0, "c": 0}}},
     "delta.clusters.at.c", "two additions at position 0"),
    ("the same name upserted twice",
     {"clusters": {"upsert": [cluster("b", 1), cluster("b", 2)]}},
     "delta.clusters.upsert[1]", "Cluster 'b' upserted twice"),
    ("the same virtual host upserted twice",
     {"virtual_hosts": [{"route_table": "rt", "upsert": [vhost("x", "/x"), vhost("x", "/y")]}]},
     "delta.virtual_hosts[0].upsert[1]", "VirtualHost of RouteTable 'rt' 'x' upserted twice"),
    ("one table patched twice",
     {"virtual_hosts": [{"route_table": "rt", "upsert": [vhost("x", "/x")]},
                        {"route_table": "rt", "remove": ["x"]}]},
     "delta.virtual_hosts[1].route_table", "RouteTable 'rt' patched twice"),
    ("one cluster's endpoints twice",
     {"endpoints": [{"cluster": "app", "endpoints": []},
                    {"cluster": "app", "endpoints": [{"address": "127.0.0.1", "port": 1}]}]},
     "delta.endpoints[1].cluster", "Cluster 'app' patched twice"),
    ("endpoints for a missing cluster",
     {"endpoints": [{"cluster": "nope", "endpoints": []}]},
     "delta.endpoints[0].cluster", "endpoints for unknown Cluster 'nope'"),
]


@pytest.mark.parametrize(("delta", "path", "why"), [b[1:] for b in BAD],
                         ids=[b[0] for b in BAD])
async def test_a_delta_that_does_not_fit_is_nacked_with_its_path(
        stream: AgentOnV1, delta: dict[str, Any], path: str, why: str) -> None:
    cp = stream.cp
    nack = await cp.send({"type": "delta",
                          "delta": {"version": "v2", "base_version": "v1", **delta}})
    assert isinstance(nack, Nack) and nack.version == "v2", nack
    assert nack.paths == [path]
    assert why in nack.reason
    # Same connection, v1 in force and serving.
    assert await cp.send({"type": "ping"}) == Pong()
    assert cp.connections == 1
    assert stream.proxy.config is not None and stream.proxy.config.version == "v1"
    assert (await get(f"http://127.0.0.1:{stream.listen}/echo"))[0] == 200


async def test_removing_and_re_adding_in_one_delta_replaces_the_resource(
        stream: AgentOnV1) -> None:
    """Well defined, so taken: the removed cluster comes back with the new endpoints."""
    cp = stream.cp
    dead = free_port()
    ack = await cp.send({"type": "delta", "delta": {
        "version": "v2", "base_version": "v1",
        "clusters": {"remove": ["app"], "upsert": [cluster("app", dead)]}}})
    assert ack == Ack(version="v2")
    assert stream.proxy.config is not None
    assert stream.proxy.config.clusters[0].endpoints[0].port == dead
    assert (await get(f"http://127.0.0.1:{stream.listen}/echo"))[0] == 503
