"""A node fronting two workloads, end to end: one real proxy says hello for both, the real
control plane registers both and sends one snapshot covering them; traffic reaches each
workload's app through its own inbound listener, and calls through each workload's outbound
listener reach a Service; each workload's status shows its own version ACKed."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from cryptography import x509
from tests.support.controlplane import (
    apply,
    auth,
    eventually,
    issue_token,
    named_origin,
    running_control_plane,
)
from tests.support.proxy import free_port
from tests.support.resources import NS, permissive_mesh, service, workload

from tulle.dataplane.agent import Agent
from tulle.dataplane.server import ProxyServer
from tulle.proxyconfig.stream import WorkloadInfo


async def get(url: str, host: str | None = None) -> str:
    async with aiohttp.ClientSession() as s, s.get(
            url, headers={"Host": host} if host else {}) as r:
        assert r.status == 200, await r.text()
        return str((await r.json())["name"])


async def status_of(url: str, host: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(url, headers={"Host": host}) as r:
        return r.status


def with_sa(doc: dict[str, Any], account: str) -> dict[str, Any]:
    return {**doc, "spec": {**doc["spec"], "serviceAccount": account}}


def spiffe(chain: str) -> str:
    leaf = x509.load_pem_x509_certificates(chain.encode())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return str(san.get_values_for_type(x509.UniformResourceIdentifier)[0])


async def proxies(api: str) -> dict[str, dict[str, Any]]:
    async with aiohttp.ClientSession(headers=auth(api)) as s, \
            s.get(f"{api}/api/v1/proxies") as r:
        return {p["name"]: p for p in (await r.json())["items"]}


async def test_one_proxy_serves_two_workloads_from_one_snapshot() -> None:
    async with named_origin("web") as web_app, named_origin("api") as api_app, \
            running_control_plane() as cp:
        web_in, api_in, web_out, api_out = (free_port() for _ in range(4))
        # PERMISSIVE: the test's own client calls the inbound ports straight (ADR 0033);
        # the node's workloads still call each other over mTLS.
        status, body = await apply(
            cp.api_url, permissive_mesh(), service("web", app="web"), service("api", app="api"),
            with_sa(workload("web-0", web_in, web_app, web_out, app="web"), "web"),
            with_sa(workload("api-0", api_in, api_app, api_out, app="api"), "api"))
        assert status == 200, body
        server = ProxyServer()
        web_w = WorkloadInfo(name="web-0", namespace=NS, address="127.0.0.1")
        api_w = WorkloadInfo(name="api-0", namespace=NS, address="127.0.0.1")
        # ADR 0032: a node proves each workload it fronts with that workload's own token.
        agent = Agent(server, [("127.0.0.1", cp.stream_port)], web_w,
                      token=await issue_token(cp.api_url, web_w), workloads=[api_w],
                      node_tokens={"shop/api-0": await issue_token(cp.api_url, api_w)},
                      backoff_max=0.2)
        task = asyncio.get_running_loop().create_task(agent.run())
        try:
            async def converged() -> bool:
                ps = await proxies(cp.api_url)
                return all(ps.get(n, {}).get("ackedVersion")
                           and ps[n]["ackedVersion"] == ps[n]["desiredVersion"]
                           for n in ("web-0", "api-0"))

            await eventually(converged, timeout=10)
            cfg = agent.current
            assert cfg is not None and cfg.version.startswith("node-")
            assert {lc.workload for lc in cfg.listeners} == {"shop/web-0", "shop/api-0"}
            assert agent.unserved == []
            # Each workload holds its own certificate, for its own SPIFFE ID, in force.
            assert agent.held is not None and set(agent.node_held) == {"shop/api-0"}
            names = {i.name: i for i in server.config.identities} if server.config else {}
            assert set(names) == {"workload", "workload:shop/api-0"}
            assert [spiffe(names[n].cert_chain_pem) for n in ("workload", "workload:shop/api-0")
                    ] == ["spiffe://cluster.local/ns/shop/sa/web",
                          "spiffe://cluster.local/ns/shop/sa/api"]
            # Inbound: each workload's port reaches its own app.
            assert await get(f"http://127.0.0.1:{web_in}/") == "web"
            assert await get(f"http://127.0.0.1:{api_in}/") == "api"
            # Outbound: each workload's own outbound listener routes to the mesh.
            assert await get(f"http://127.0.0.1:{web_out}/", host="api.shop") == "api"
            assert await get(f"http://127.0.0.1:{api_out}/", host="web.shop") == "web"
            ps = await proxies(cp.api_url)
            assert ps["web-0"]["node"] == ps["api-0"]["node"] == ["shop/web-0", "shop/api-0"]
            assert ps["api-0"]["connected"] and ps["api-0"]["features"]

            # A change to one workload's part reaches the node as a delta of that part.
            acked = ps["api-0"]["ackedVersion"]
            web_acked = ps["web-0"]["ackedVersion"]
            status, body = await apply(cp.api_url, with_sa(workload(
                "api-0", api_in, api_app, api_out, app="api", tier="backend"), "api"),
                                       service("api2", tier="backend"))
            assert status == 200, body

            async def moved() -> bool:
                p = await proxies(cp.api_url)
                return bool(p["api-0"]["ackedVersion"] != acked and await converged())

            await eventually(moved, timeout=10)
            assert (await proxies(cp.api_url))["web-0"]["ackedVersion"] != web_acked
            assert await get(f"http://127.0.0.1:{web_out}/", host="api2.shop") == "api"

            # Each workload's calls leave with its own identity (ADR 0032): with only
            # shop/web allowed into api, web's outbound gets through, api's own does not.
            status, body = await apply(cp.api_url, {
                "apiVersion": "policy.tulle.dev/v1alpha1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "only-web", "namespace": NS},
                "spec": {"targetRef": {"group": "", "kind": "Service", "name": "api"},
                         "rules": [{"from": [{"serviceAccounts": ["shop/web"]}]}]}})
            assert status == 200, body

            async def api_refuses_itself() -> bool:
                return await status_of(f"http://127.0.0.1:{api_out}/", "api.shop") == 403

            await eventually(api_refuses_itself, timeout=10)
            assert await get(f"http://127.0.0.1:{web_out}/", host="api.shop") == "api"
        finally:
            agent.stop()
            task.cancel()
            await server.close()
