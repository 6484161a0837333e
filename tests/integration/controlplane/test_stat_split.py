"""`tulle stat` Service rows under a canary split (ADR 0059): a real control plane, real
sidecars on 127.0.0.x with mTLS between them, and an HTTPRoute splitting Service `catalog` to
Services `catalog-v1` / `catalog-v2` (each pod is behind `catalog` and its version's Service).

What the demo got wrong and this checks: `catalog` shows every request addressed to it (not 0),
`catalog-v1` / `catalog-v2` show their shares, and MESHED counts the pods with a proxy behind
each Service (2, 1, 1; not 0 for the version Services).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from tests.integration.controlplane.test_stat import INTERVAL, NS, V1, by_name, workload
from tests.support.controlplane import (
    apply,
    auth,
    eventually,
    running_control_plane,
    serve_handler,
    subscribe,
)
from tests.support.proxy import free_port

from tulle.proxyconfig.stream import WorkloadInfo

GW = "gateway.networking.k8s.io/v1"


def named(name: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=name)
    return handler


def service(name: str, **selector: str) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": selector,
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


async def stat(api: str, *query: str) -> dict[str, Any]:
    params = dict(q.split("=", 1) for q in query)
    async with aiohttp.ClientSession(headers=auth(api)) as s, s.get(
            f"{api}/api/v1/stat", params=params) as r:
        body: dict[str, Any] = await r.json()
        assert r.status == 200, body
        return body


async def test_split_counts_under_the_parent_and_each_backend_and_meshed_counts_pods(
        tmp_path: Path) -> None:
    in1, in2, out = free_port(), free_port(), free_port()
    async with serve_handler(named("v1")) as o1, serve_handler(named("v2")) as o2, \
            running_control_plane(stats_interval=INTERVAL) as cp:
        status, body = await apply(
            cp.api_url,
            workload("catalog-v1-0", "127.0.0.2", [{"name": "http", "port": in1,
                                                    "targetPort": o1}],
                     outbound=free_port(), app="catalog", version="v1"),
            workload("catalog-v2-0", "127.0.0.3", [{"name": "http", "port": in2,
                                                    "targetPort": o2}],
                     outbound=free_port(), app="catalog", version="v2"),
            workload("web-0", "127.0.0.10", [], outbound=out, app="web"),
            service("catalog", app="catalog"),
            service("catalog-v1", app="catalog", version="v1"),
            service("catalog-v2", app="catalog", version="v2"),
            {"apiVersion": GW, "kind": "HTTPRoute",
             "metadata": {"name": "catalog-canary", "namespace": NS},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "catalog",
                                      "port": 80}],
                      "rules": [{"backendRefs": [
                          {"name": "catalog-v1", "port": 80, "weight": 1},
                          {"name": "catalog-v2", "port": 80, "weight": 1}]}]}})
        assert status == 200, body
        proxies = []
        try:
            for name, addr in (("catalog-v1-0", "127.0.0.2"), ("catalog-v2-0", "127.0.0.3"),
                               ("web-0", "127.0.0.10")):
                proxies.append(await subscribe([cp.stream_port], WorkloadInfo(
                    name=name, namespace=NS, address=addr), cache_dir=tmp_path))
            answered: Counter[str] = Counter()
            total = 0
            async with aiohttp.ClientSession() as s:

                async def call() -> str:
                    nonlocal total
                    async with s.get(f"http://127.0.0.1:{out}/",
                                     headers={"Host": "catalog"}) as r:
                        text = await r.text()
                        total += 1
                        got = text if r.status == 200 else str(r.status)
                        answered[got] += 1
                        return got

                async def up() -> bool:
                    with contextlib.suppress(aiohttp.ClientError):
                        return await call() in ("v1", "v2")
                    return False

                await eventually(up, timeout=15)
                for _ in range(60):
                    await call()
            assert answered["v1"] > 5 and answered["v2"] > 5, answered

            rows: dict[str, dict[str, Any]] = {}

            async def counted() -> bool:
                nonlocal rows
                doc = await stat(cp.api_url, "kind=svc", "namespace=shop", "window=60s")
                rows = by_name(doc["items"])
                c = rows.get("catalog")
                return bool(c) and c["requests"] == total and sum(
                    rows.get(f"catalog-{v}", {}).get("requests", 0) for v in ("v1", "v2")) \
                    == total

            await eventually(counted, timeout=10)
            v1, v2 = rows["catalog-v1"], rows["catalog-v2"]
            assert v1["requests"] + v2["requests"] == total
            assert v1["requests"] >= answered["v1"] and v2["requests"] >= answered["v2"]
            assert rows["catalog"]["rps"] > 0 and v1["rps"] > 0 and v2["rps"] > 0
            assert (rows["catalog"]["meshed"], v1["meshed"], v2["meshed"]) == (2, 1, 1)
            assert "web" not in rows or rows["web"]["requests"] == 0
            # Edges stay by backend: web-0 -> catalog-v1 / catalog-v2 (what the pods took).
            doc = await stat(cp.api_url, "kind=workload", "name=web-0", "namespace=shop",
                             "window=60s")
            assert {e["to"]["name"] for e in doc["edges"]} == {"catalog-v1", "catalog-v2"}
        finally:
            for p in proxies:
                await p.stop()
