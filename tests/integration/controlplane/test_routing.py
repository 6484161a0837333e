"""Gateway API routes through the control plane and real proxies (issue 8's compile side).

Resources go in over the REST API; client workloads run real proxies subscribed to the control
plane; backends are echo origins on loopback that report what they received (which one answered,
method, path and query, headers).  Backend workloads have no proxy: their Service endpoints are
the origins themselves, so each request crosses exactly one proxy (the client's outbound side).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from tests.support.controlplane import apply, eventually, running_control_plane, subscribe
from tests.support.proxy import free_port

from tulle.proxyconfig.stream import WorkloadInfo

EXAMPLES = Path(__file__).parents[3] / "examples" / "resources"
V1 = "mesh.tulle.dev/v1alpha1"
GW = "gateway.networking.k8s.io/v1"


@contextlib.asynccontextmanager
async def echo(name: str, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[int]:
    """An origin answering every request with what it received, as JSON; yields its port."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"name": name, "method": request.method,
                                  "path": request.path_qs,
                                  "headers": {k.lower(): v for k, v in request.headers.items()}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        yield int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def backend(name: str, port: int, ns: str = "shop", **labels: str) -> dict[str, Any]:
    """A workload without a proxy: its `http` port is the origin's, so clients send it
    plaintext (`sidecar: false`, ADR 0033)."""
    return {"apiVersion": V1, "kind": "Workload",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"address": "127.0.0.1", "sidecar": False,
                     "ports": [{"name": "http", "port": port}]}}


def client(name: str, ns: str, outbound: int) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "Workload",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
            "spec": {"address": "127.0.0.1", "outboundPort": outbound,
                     "ports": [{"name": "http", "port": free_port(), "targetPort": 1}]}}


def service(name: str, ports: tuple[int, ...] = (80,), ns: str = "shop",
            **selector: str) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": selector,
                     "ports": [{"name": f"http-{p}", "port": p, "targetPort": "http",
                                "appProtocol": "http"} for p in ports]}}


def http_route(name: str, rules: list[dict[str, Any]], parent: str = "api", ns: str = "shop",
               parent_ns: str | None = None, port: int | None = 80) -> dict[str, Any]:
    ref: dict[str, Any] = {"group": "", "kind": "Service", "name": parent}
    if parent_ns:
        ref["namespace"] = parent_ns
    if port is not None:
        ref["port"] = port
    return {"apiVersion": GW, "kind": "HTTPRoute", "metadata": {"name": name, "namespace": ns},
            "spec": {"parentRefs": [ref], "rules": rules}}


def to(*backends: tuple[str, int], ns: str | None = None) -> list[dict[str, Any]]:
    out = []
    for name, weight in backends:
        ref: dict[str, Any] = {"name": name, "port": 80, "weight": weight}
        if ns:
            ref["namespace"] = ns
        out.append(ref)
    return out


class Client:
    """Requests through one client proxy's outbound listener."""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session = session
        self.port = port

    async def call(self, path: str, host: str = "api", method: str = "GET",
                   headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        async with self.session.request(method, f"http://127.0.0.1:{self.port}{path}",
                                        headers={"Host": host, **(headers or {})}) as r:
            if r.content_type == "application/json":
                return r.status, await r.json()
            return r.status, {"text": await r.text()}

    async def who(self, path: str, host: str = "api", method: str = "GET",
                  headers: dict[str, str] | None = None) -> str:
        """Which backend answered, or the status code when the proxy answered itself."""
        status, body = await self.call(path, host, method, headers)
        return str(body["name"]) if status == 200 else str(status)

    async def spread(self, path: str, n: int, host: str = "api",
                     headers: dict[str, str] | None = None) -> Counter[str]:
        got: Counter[str] = Counter()
        for _ in range(n // 25):
            got.update(await asyncio.gather(*(self.who(path, host, headers=headers)
                                              for _ in range(25))))
        return got


@contextlib.asynccontextmanager
async def mesh(tmp_path: Path, docs: list[dict[str, Any]],
               clients: dict[str, tuple[str, int]]) -> AsyncIterator[dict[str, Client]]:
    """A control plane with `docs` applied and a subscribed proxy per client
    (name -> (namespace, outbound port)); yields a `Client` per name, once each one routes."""
    async with running_control_plane() as cp:
        status, body = await apply(cp.api_url, *docs)
        assert status == 200, body
        proxies = [await subscribe([cp.stream_port], WorkloadInfo(name=n, namespace=ns,
                                                                  address="127.0.0.1"),
                                   cache_dir=tmp_path)
                   for n, (ns, _) in clients.items()]
        try:
            async with aiohttp.ClientSession() as session:
                out = {n: Client(session, port) for n, (_, port) in clients.items()}
                for c in out.values():
                    await eventually(lambda c=c: _listening(c.port))
                yield out
        finally:
            for p in proxies:
                await p.stop()


async def _listening(port: int) -> bool:
    try:
        _, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    w.close()
    return True


async def _routed(c: Client, path: str, want: str, **kw: Any) -> bool:
    try:
        return await c.who(path, **kw) == want
    except aiohttp.ClientError:
        return False


async def test_every_match_type_routes_as_written(tmp_path: Path) -> None:
    async with echo("v1") as p1, echo("v2") as p2:
        out = free_port()
        v2 = to(("api-v2", 1))
        docs = [
            backend("api-v1-0", p1, app="api", version="v1"),
            backend("api-v2-0", p2, app="api", version="v2"),
            client("web-0", "shop", out),
            service("api", app="api", version="v1"), service("api-v2", app="api", version="v2"),
            service("exact-only", app="api", version="v1"),
            http_route("api", [
                {"matches": [{"path": {"type": "Exact", "value": "/login"}, "method": "POST"}],
                 "backendRefs": v2},
                {"matches": [{"headers": [{"name": "x-beta", "value": "1"}]},
                             {"queryParams": [{"name": "tier", "type": "RegularExpression",
                                               "value": "gold|silver"}]}],
                 "backendRefs": v2},
                {"matches": [{"path": {"type": "RegularExpression", "value": "/items/[0-9]+"},
                              "headers": [{"name": "x-env", "type": "RegularExpression",
                                           "value": "dev|test"}]}],
                 "backendRefs": v2},
                # A pattern the proxy refuses: the rule is left out, not approximated.
                {"matches": [{"headers": [{"name": "x-evil", "type": "RegularExpression",
                                           "value": "(a+)+"}]}],
                 "backendRefs": v2},
                {"backendRefs": to(("api", 1))}]),
            http_route("exact", [{"matches": [{"path": {"type": "Exact", "value": "/only"}}],
                                  "backendRefs": to(("exact-only", 1))}], parent="exact-only"),
        ]
        async with mesh(tmp_path, docs, {"web-0": ("shop", out)}) as clients:
            c = clients["web-0"]
            await eventually(lambda: _routed(c, "/login", "v2", method="POST"))
            assert await c.who("/login") == "v1"  # method is part of the match
            assert await c.who("/login/x", method="POST") == "v1"  # Exact is exact
            assert await c.who("/a", headers={"X-Beta": "1"}) == "v2"  # names: any case
            assert await c.who("/a", headers={"x-beta": "2"}) == "v1"
            assert await c.who("/a?tier=silver") == "v2"  # OR across matches
            assert await c.who("/a?tier=bronze") == "v1"
            assert await c.who("/items/42", headers={"x-env": "dev"}) == "v2"
            assert await c.who("/items/42") == "v1"  # AND within a match
            assert await c.who("/items/4x2", headers={"x-env": "dev"}) == "v1"
            assert await c.who("/a", headers={"x-evil": "aaaa"}) == "v1"
            # A Service with a route answers 404 where no rule matches: no default route.
            assert await c.who("/only", host="exact-only") == "v1"
            assert await c.who("/other", host="exact-only") == "404"


async def test_producer_and_consumer_routes_and_parent_port(tmp_path: Path) -> None:
    async with echo("v1") as p1, echo("v2") as p2:
        shop_out, other_out = free_port(), free_port()
        docs = [
            backend("api-v1-0", p1, app="api", version="v1"),
            backend("api-v2-0", p2, app="api", version="v2"),
            client("web-0", "shop", shop_out), client("web-1", "other", other_out),
            service("api", ports=(80, 8080), app="api", version="v1"),
            service("api-v2", app="api", version="v2"),
            # Producer route, port 80 only: every client's port-80 traffic goes to v2.
            http_route("to-v2", [{"backendRefs": to(("api-v2", 1))}]),
            # Consumer route from namespace other: its clients go to v1 (granted) on /, and a
            # backend in shop without a grant answers 500.
            http_route("mine", [
                {"backendRefs": to(("api", 1), ns="shop")},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/nogrant"}}],
                 "backendRefs": to(("api-v2", 1), ns="shop")}],
                ns="other", parent_ns="shop"),
            {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
             "metadata": {"name": "other-to-api", "namespace": "shop"},
             "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                "namespace": "other"}],
                      "to": [{"group": "", "kind": "Service", "name": "api"}]}},
        ]
        async with mesh(tmp_path, docs, {"web-0": ("shop", shop_out),
                                         "web-1": ("other", other_out)}) as clients:
            shop, other = clients["web-0"], clients["web-1"]
            await eventually(lambda: _routed(shop, "/x", "v2", host="api.shop"))
            await eventually(lambda: _routed(other, "/x", "v1", host="api.shop"))
            assert await shop.who("/nogrant", host="api.shop") == "v2"  # not theirs
            assert await other.who("/nogrant", host="api.shop") == "500"
            # parentRef.port: port 8080 has no route, so its default (api = v1) applies.
            assert await shop.who("/x", host="api.shop:8080") == "v1"
            assert await other.who("/x", host="api.shop:8080") == "v1"


async def test_weighted_split_and_a_missing_backends_share(tmp_path: Path) -> None:
    async with echo("v1") as p1, echo("v2") as p2:
        out = free_port()
        docs = [
            backend("api-v1-0", p1, app="api", version="v1"),
            backend("api-v2-0", p2, app="api", version="v2"),
            client("web-0", "shop", out),
            service("api", app="api", version="v1"), service("api-v2", app="api", version="v2"),
            http_route("split", [
                {"name": "seventy-thirty", "matches": [{"path": {"value": "/split"}}],
                 "backendRefs": to(("api", 70), ("api-v2", 30), ("api-v2", 0))},
                {"matches": [{"path": {"value": "/half-gone"}}],
                 "backendRefs": to(("api", 50), ("gone", 50))},
                {"backendRefs": to(("api", 1))}]),
        ]
        async with mesh(tmp_path, docs, {"web-0": ("shop", out)}) as clients:
            c = clients["web-0"]
            await eventually(lambda: _routed(c, "/half-gone", "500"))
            got = await c.spread("/split", 500)
            assert set(got) == {"v1", "v2"}, got
            assert abs(got["v1"] / 500 - 0.70) <= 0.08, got  # 3.9 sd of a 500-call draw
            got = await c.spread("/half-gone", 500)
            assert set(got) == {"v1", "500"}, got  # its share fails, the rest is served
            assert abs(got["500"] / 500 - 0.50) <= 0.09, got  # 4 sd


async def test_the_readme_canary_example_as_written(tmp_path: Path) -> None:
    """`examples/resources/` applied as the README says (the two reviews workloads moved to
    loopback addresses, where their origins listen): testers get v2, everyone else 90/10."""
    docs = [d for f in sorted(EXAMPLES.glob("*.yaml"))
            for d in yaml.safe_load_all(f.read_text()) if d]
    addresses = {"reviews-v1-7d9f": "127.0.0.2", "reviews-v2-5c4b": "127.0.0.3"}
    for d in docs:
        if d["kind"] == "Workload" and d["metadata"]["name"] in addresses:
            d["spec"]["address"] = addresses[d["metadata"]["name"]]
            # no proxy runs in front of them here: the origin is the workload (ADR 0033)
            d["spec"]["sidecar"] = False
    out = free_port()
    async with contextlib.AsyncExitStack() as origins:
        try:
            await origins.enter_async_context(echo("v1", "127.0.0.2", 9080))
            await origins.enter_async_context(echo("v2", "127.0.0.3", 9080))
        except OSError as exc:  # 9080 on 127.0.0.2/3 taken by something else on this machine
            pytest.skip(f"cannot listen where the example's workloads are: {exc}")
        async with mesh(tmp_path, [*docs, client("web-0", "shop", out)],
                        {"web-0": ("shop", out)}) as clients:
            c = clients["web-0"]
            host = "reviews.shop:9080"
            await eventually(lambda: _routed(c, "/", "v2", host=host,
                                             headers={"x-canary": "always"}))
            testers = await c.spread("/r/1", 100, host, headers={"x-canary": "always"})
            assert testers == Counter({"v2": 100})
            got = await c.spread("/r/1", 500, host)
            assert set(got) <= {"v1", "v2"}, got
            assert abs(got["v2"] / 500 - 0.10) <= 0.05, got
            status, body = await c.call("/r/2", host)
            assert status == 200 and body["headers"]["x-routed-by"] == "tulle"
