"""Control plane end to end: apply resources over the REST API, real proxies follow.

Two workloads on loopback, each behind a proxy subscribed to the control plane; the client
calls the `api` Service through the web workload's outbound listener by Host.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
from tests.support.controlplane import (
    apply,
    auth,
    eventually,
    named_origin,
    running_control_plane,
    subscribe,
)
from tests.support.proxy import free_port
from tests.support.resources import NS, route, service, workload

from tulle.proxyconfig.stream import WorkloadInfo


async def fetch(url: str, host: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url, headers={"Host": host}) as r:
        return r.status, await r.text()


async def test_apply_route_traffic_follows_then_control_plane_outage(tmp_path: Path) -> None:
    async with named_origin("v1") as app_v1, named_origin("v2") as app_v2:
        out_port, api_port, api2_port = free_port(), free_port(), free_port()
        store = f"sqlite:{tmp_path / 'cp.db'}"  # the CA must outlive the outage (ADR 0028)
        async with running_control_plane(store) as cp:
            status, body = await apply(
                cp.api_url,
                workload("web-0", free_port(), 1, out_port, app="web"),
                workload("api-v1", api_port, app_v1, free_port(), app="api", version="v1"),
                workload("api-v2", api2_port, app_v2, free_port(), app="api", version="v2"),
                service("api", app="api", version="v1"),
                service("api-v2", app="api", version="v2"))
            assert status == 200, body
            proxies = [await subscribe([cp.stream_port], WorkloadInfo(name=n, namespace=NS,
                                                                      address="127.0.0.1"),
                                       cache_dir=tmp_path)
                       for n in ("web-0", "api-v1", "api-v2")]
            try:
                url = f"http://127.0.0.1:{out_port}/echo/x"
                await eventually(lambda: _served_by(url, "v1"))
                # An HTTPRoute sends /echo to api-v2: traffic follows within a second.
                status, body = await apply(cp.api_url, route("api-route", ("/echo", "api-v2")))
                assert status == 200, body
                took = await eventually(lambda: _served_by(url, "v2"), timeout=1.0)
                assert took < 1.0
                # Deleting it sends traffic back to api (v1).
                async with aiohttp.ClientSession(headers=auth(cp.api_url)) as s, s.delete(
                        f"{cp.api_url}/api/v1/resources/httproutes/api-route",
                        params={"namespace": NS}) as r:
                    assert r.status == 200
                await eventually(lambda: _served_by(url, "v1"), timeout=1.0)
            finally:
                stream_port = cp.stream_port
        # The control plane is gone: traffic keeps flowing on the last config.
        code, _ = await fetch(f"http://127.0.0.1:{out_port}/echo/y", "api")
        assert code == 200
        try:
            # It comes back (same stream port, same store and CA): proxies present their
            # certificates and resync; once no Service exists, web-0 has no outbound listener.
            async with running_control_plane(store, stream_port=stream_port) as cp2:
                async with aiohttp.ClientSession(headers=auth(cp2.api_url)) as s:
                    for svc in ("api", "api-v2"):
                        async with s.delete(f"{cp2.api_url}/api/v1/resources/services/{svc}",
                                            params={"namespace": NS}) as r:
                            assert r.status == 200
                await eventually(lambda: _refused(url), timeout=5.0)
        finally:
            for p in proxies:
                await p.stop()


async def _served_by(url: str, name: str) -> bool:
    try:
        async with aiohttp.ClientSession() as s, s.get(url, headers={"Host": "api"}) as r:
            if r.status != 200:
                return False
            body = await r.json()
    except aiohttp.ClientConnectionError:
        return False  # the outbound listener is not configured yet
    return bool(body["name"] == name and body["path"].startswith("/echo"))


async def _refused(url: str) -> bool:
    try:
        await fetch(url, "api")
    except aiohttp.ClientConnectionError:
        return True
    return False


async def test_changing_the_trust_domain_without_an_alias_is_warned_at_apply() -> None:
    """Certificates name the old trust domain until re-issued; clients expect the new one at
    once: apply says so, unless the old one is kept as an alias (ADR 0087)."""
    def mesh(**spec: object) -> dict[str, object]:
        return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
                "metadata": {"name": "default"}, "spec": spec}

    async with running_control_plane() as cp:
        status, body = await apply(cp.api_url, mesh())
        assert status == 200, body
        status, body = await apply(cp.api_url, mesh(trustDomain="example.org"))
        assert status == 200, body
        [res] = body["results"]
        assert any(w.startswith("spec.trustDomain: changes from cluster.local to example.org")
                   and "add cluster.local to spec.trustDomainAliases" in w
                   for w in res.get("warnings") or []), res
        status, body = await apply(cp.api_url, mesh(trustDomain="other.org",
                                                    trustDomainAliases=["example.org"]))
        assert status == 200, body
        [res] = body["results"]
        assert not any("trustDomain" in w for w in res.get("warnings") or []), res
