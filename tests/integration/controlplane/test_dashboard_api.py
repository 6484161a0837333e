"""The dashboard's doors over HTTP (ADR 0056): static files open with a strict CSP, nothing
else under /dashboard/ without a token, the topology and attached-resources reads behind the
API's auth, and the topology a real mesh reports (mTLS on each edge)."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from tests.integration.controlplane.test_stat import NS, running_mesh
from tests.support.cli import tulle
from tests.support.controlplane import auth, eventually


async def test_static_files_are_open_and_locked_down_and_data_needs_a_token(
        tmp_path: Path) -> None:
    async with running_mesh(tmp_path, clients=("a",)) as m, aiohttp.ClientSession() as s:
        api = m.cp.api_url
        async with s.get(f"{api}/dashboard", allow_redirects=False) as r:
            assert r.status == 307 and r.headers["location"] == "/dashboard/"
        for path, ctype in (("/dashboard/", "text/html"), ("/dashboard/app.js", "text/javascript"),
                            ("/dashboard/vendor/cytoscape.min.js", "text/javascript")):
            async with s.get(api + path) as r:
                assert r.status == 200 and r.headers["content-type"].startswith(ctype)
                csp = r.headers["content-security-policy"]
                assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
                assert r.headers["x-content-type-options"] == "nosniff"
        for path in ("/dashboard/nope.js", "/dashboard/../api/v1/proxies",
                     "/dashboard/vendor/README.md", "/api/v1/topology",
                     f"/api/v1/services/{NS}/api/attached"):
            async with s.get(api + path) as r:
                assert r.status == 401, path
        async with s.get(f"{api}/dashboard/nope.js", headers=auth(api)) as r:
            assert r.status == 404
        async with s.get(f"{api}/api/v1/topology?window=1y", headers=auth(api)) as r:
            assert r.status == 400 and "window" in (await r.json())["error"]

        async def topology() -> dict[str, object] | None:
            async with s.get(f"{api}/api/v1/topology", params={"namespace": NS},
                             headers=auth(api)) as r:
                doc: dict[str, object] = await r.json()
            edges = doc["edges"]
            assert isinstance(edges, list)
            return doc if {e["id"] for e in edges} >= {"shop/a-0->shop/api",
                                                       "shop/api=>shop/api-0"} else None

        for _ in range(3):
            await m.call("a")
        doc = await eventually(topology, timeout=10) and await topology()
        assert doc is not None
        edges = {e["id"]: e for e in doc["edges"]}  # type: ignore[attr-defined]
        traffic = edges["shop/a-0->shop/api"]
        assert (traffic["source"], traffic["target"], traffic["mtls"]) == (
            "wl:shop/a-0", "svc:shop/api", True)
        assert traffic["requests"] >= 3 and traffic["successRate"] == 1.0
        assert edges["shop/api=>shop/api-0"]["mtls"] == "strict"
        nodes = {n["id"] for n in doc["nodes"]}  # type: ignore[attr-defined]
        assert {"svc:shop/api", "wl:shop/a-0", "wl:shop/api-0"} <= nodes
        async with s.get(f"{api}/api/v1/services/{NS}/api/attached", headers=auth(api)) as r:
            assert (await r.json()) == {"service": {"namespace": NS, "name": "api"},
                                        "routes": [], "policies": []}


async def test_tulle_dashboard_prints_the_url_with_the_token_in_its_fragment(
        tmp_path: Path) -> None:
    async with running_mesh(tmp_path, clients=("a",)) as m:
        code, out, err = await tulle(m.cp.api_url, "dashboard", "--no-browser")
        assert code == 0, err
        url = out.strip()
        assert url.startswith(f"{m.cp.api_url}/dashboard/#token=tulle_")
