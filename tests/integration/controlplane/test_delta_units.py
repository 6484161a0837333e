"""Delta units through a real push server to real proxies: one announcing them gets a changed
virtual host or endpoint list alone (and keeps every untouched struct and runtime object), one
that does not announce them gets whole resources; both end up serving the same traffic."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
from tests.support.ca import stream_tls
from tests.support.controlplane import eventually, named_origin
from tests.support.proxy import free_port

from tulle.controlplane.push.server import PushServer, SnapshotCache
from tulle.dataplane.agent import Agent
from tulle.dataplane.server import ProxyServer
from tulle.proxyconfig import validate
from tulle.proxyconfig.delta import UNITS
from tulle.proxyconfig.features import SUPPORTED
from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.stream import WorkloadInfo

NS = "shop"
WITHOUT_UNITS = [f for f in SUPPORTED if f not in UNITS]
"""What a proxy built before the delta units would announce."""


def snapshot(version: str, listen: int, weights: tuple[int, int], a_port: int, b_port: int,
             extra: bool = False) -> ProxyConfig:
    hosts: list[dict[str, Any]] = [
        {"name": f"filler-{i}", "domains": [f"filler-{i}"],
         "rules": [{"backends": [{"cluster": "a"}]}]} for i in range(20)]
    hosts.insert(5, {"name": "canary", "domains": ["canary"], "rules": [{"backends": [
        {"cluster": "a", "weight": weights[0]}, {"cluster": "b", "weight": weights[1]}]}]})
    if extra:
        hosts.insert(9, {"name": "added", "domains": ["added"],
                         "rules": [{"backends": [{"cluster": "b"}]}]})
    return validate({
        "version": version,
        "listeners": [{"name": "out", "port": listen, "protocol": "http1",
                       "route_table": "rt"}],
        "clusters": [{"name": "a", "endpoints": [{"address": "127.0.0.1", "port": a_port}]},
                     {"name": "b", "endpoints": [{"address": "127.0.0.1", "port": b_port}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": hosts}],
    })


async def who(listen: int, host: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(
            f"http://127.0.0.1:{listen}/", headers={"Host": host}) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["name"])


async def test_units_reach_a_proxy_that_takes_them_and_whole_resources_one_that_does_not(
        ) -> None:
    async with named_origin("a") as a, named_origin("b") as b, named_origin("c") as c:
        cache = SnapshotCache()
        tls, trust = stream_tls()
        push = PushServer(cache, ping_interval=0.5, tls=tls)
        cp_port = await push.start("127.0.0.1", 0)
        proxies: dict[str, tuple[ProxyServer, Agent, int, asyncio.Task[None]]] = {}
        for name, features in (("new-0", list(SUPPORTED)), ("old-0", WITHOUT_UNITS)):
            server = ProxyServer()
            agent = Agent(server, [("127.0.0.1", cp_port)], WorkloadInfo(name=name, namespace=NS),
                          backoff_max=0.2, features=features, trust=trust)
            proxies[name] = (server, agent, free_port(),
                             asyncio.get_running_loop().create_task(agent.run()))
        try:
            async def step(version: str, make: Callable[[int], ProxyConfig]) -> None:
                for name, (_, _, listen, _) in proxies.items():
                    cache.set((NS, name), make(listen))
                await eventually(lambda: all(
                    push.status.get((NS, n)) and push.status[(NS, n)].acked_version == version
                    for n in proxies), timeout=10)
                for name, (_, agent, listen, _) in proxies.items():
                    assert agent.current == make(listen), name  # the exact snapshot

            await step("v1", lambda p: snapshot("v1", p, (1, 0), a, b))
            before = {n: (agent.current, server.runtime.clusters.clusters)
                      for n, (server, agent, _, _) in proxies.items()}
            for name, (_, _, listen, _) in proxies.items():
                assert await who(listen, "canary") == "a", name

            # The canary moves all its weight: only that virtual host changes.
            await step("v2", lambda p: snapshot("v2", p, (0, 1), a, b))
            for name, (_, _, listen, _) in proxies.items():
                assert [await who(listen, "canary") for _ in range(4)] == ["b"] * 4, name
                assert await who(listen, "filler-3") == "a", name
            new, old = proxies["new-0"][1].current, proxies["old-0"][1].current
            assert new is not None and old is not None
            was = before["new-0"][0]
            assert was is not None
            kept = [h is w for h, w in zip(new.route_tables[0].virtual_hosts,
                                           was.route_tables[0].virtual_hosts, strict=True)]
            assert kept.count(False) == 1 and not kept[5]  # only the canary is a new object
            was_old = before["old-0"][0]
            assert was_old is not None
            assert not any(h is w for h, w in zip(old.route_tables[0].virtual_hosts,
                                                  was_old.route_tables[0].virtual_hosts,
                                                  strict=True))  # came whole

            # Cluster b's endpoint moves to origin c, and a virtual host is added mid-table.
            await step("v3", lambda p: snapshot("v3", p, (0, 1), a, c, extra=True))
            for name, (server, _, listen, _) in proxies.items():
                assert await who(listen, "canary") == "c", name
                assert await who(listen, "added") == "c", name
                # The cluster runtimes survived (endpoints swapped in place) on both.
                rts = server.runtime.clusters.clusters
                assert all(rts[k] is before[name][1][k] for k in ("a", "b")), name
            new3 = proxies["new-0"][1].current
            assert new3 is not None
            assert new3.clusters[0] is new.clusters[0]  # untouched cluster: same struct
            assert new3.route_tables[0].virtual_hosts[5] is new.route_tables[0].virtual_hosts[5]
            units = {n: push.status[(NS, n)].to_dict()["deltaUnits"] for n in proxies}
            assert units == {"new-0": sorted(UNITS), "old-0": []}
            assert all(push.status[(NS, n)].to_dict()["withheld"] == [] for n in proxies)
        finally:
            for server, agent, _, task in proxies.values():
                agent.stop()
                task.cancel()
                await server.close()
            await push.close()
