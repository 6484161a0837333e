"""Gateway API RequestRedirect and URLRewrite end to end: an HTTPRoute applied over the REST
API is compiled, pushed to a real proxy, and traffic through it over HTTP/1.1 and h2c shows the
redirect (answered by the proxy: the backend never sees it) and the rewrite (the backend sees
the new path and authority), reported by an echo backend."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from tests.integration.controlplane.test_grpc_routing import _channel, grpc_route, grpc_service
from tests.integration.controlplane.test_routing import backend, client, mesh
from tests.support.controlplane import (
    apply,
    auth,
    eventually,
    running_control_plane,
    serve_handler,
    subscribe,
)
from tests.support.grpc_peers import running_grpc_server, who
from tests.support.h2peers import H2Client, running_h2_origin
from tests.support.proxy import free_port
from tests.support.resources import NS, service, workload

from tulle.proxyconfig.stream import WorkloadInfo


@contextlib.asynccontextmanager
async def echo_origin(seen: list[str]) -> AsyncIterator[int]:
    """Answers with the path and authority it received; `seen` lists every path."""
    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        return web.json_response({"path": request.path_qs, "host": request.headers["Host"]})

    async with serve_handler(handler) as port:
        yield port


def filters_route() -> dict[str, Any]:
    backend = [{"name": "api", "port": 80}]
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "api-filters", "namespace": NS},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "api", "port": 80}],
                     "rules": [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
         "filters": [{"type": "RequestRedirect", "requestRedirect": {
             "scheme": "https", "statusCode": 301,
             "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/moved"}}],
         "filters": [{"type": "RequestRedirect", "requestRedirect": {
             "hostname": "elsewhere.example", "port": 8080}}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
         "filters": [{"type": "URLRewrite", "urlRewrite": {
             "hostname": "backend.shop",
             "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}}],
         "backendRefs": backend},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": backend},
    ]}}


async def h1(port: int, path: str) -> tuple[int, str | None, Any]:
    async with aiohttp.ClientSession() as s, s.get(
            f"http://127.0.0.1:{port}{path}", headers={"Host": "api"},
            allow_redirects=False) as r:
        body = await r.json() if r.content_type == "application/json" else await r.read()
        return r.status, r.headers.get("Location"), body


async def h2(port: int, path: str) -> tuple[int, str | None, Any]:
    c = await H2Client.connect(port)
    try:
        _, r = c.start("GET", path, authority="api")
        await r.done.wait()
        loc = r.header(b"location")
        return r.status, loc.decode() if loc else None, (r.json() if r.status == 200
                                                         else bytes(r.body))
    finally:
        c.close()


async def test_redirect_and_rewrite_from_an_httproute_reach_traffic(tmp_path: Path) -> None:
    seen: list[str] = []
    async with echo_origin(seen) as app:
        out = free_port()
        async with running_control_plane() as cp:
            status, body = await apply(
                cp.api_url,
                workload("web-0", free_port(), 1, out, app="web"),
                workload("api-0", free_port(), app, free_port(), app="api"),
                service("api", app="api"), filters_route())
            assert status == 200, body
            proxies = [await subscribe([cp.stream_port], WorkloadInfo(
                name=n, namespace=NS, address="127.0.0.1"), cache_dir=tmp_path)
                for n in ("web-0", "api-0")]
            try:
                async def routed() -> bool:
                    try:
                        return (await h1(out, "/old/x"))[0] == 301
                    except aiohttp.ClientConnectionError:
                        return False
                await eventually(routed, timeout=5.0)
                seen.clear()
                for call in (h1, h2):
                    got = await call(out, "/old/a/b?q=1")
                    assert got[:2] == (301, "https://api/new/a/b?q=1"), (call, got)
                    got = await call(out, "/old")
                    assert got[:2] == (301, "https://api/new"), (call, got)
                    got = await call(out, "/moved/here")
                    assert got[:2] == (302, "http://elsewhere.example:8080/moved/here"), got
                    assert seen == []  # answered by the proxy: nothing reached the backend

                    status, _, echoed = await call(out, "/v1/users?id=7")
                    assert status == 200 and echoed == {"path": "/v2/users?id=7",
                                                        "host": "backend.shop"}, (call, echoed)
                    status, _, echoed = await call(out, "/v1")
                    assert status == 200 and echoed["path"] == "/v2"
                    status, _, echoed = await call(out, "/v10")  # not the /v1 segment
                    assert status == 200 and echoed == {"path": "/v10", "host": "api"}
                    seen.clear()

                # The route's status does not say anything is unsupported.
                async with aiohttp.ClientSession() as s, s.get(
                        f"{cp.api_url}/api/v1/resources/httproutes/api-filters",
                        params={"namespace": NS}, headers=auth(cp.api_url)) as r:
                    text = await r.text()
                assert '"Accepted"' in text and "not supported" not in text, text
            finally:
                for p in proxies:
                    await p.stop()


async def test_backend_request_is_a_per_try_deadline_inside_the_request_timeout(
        tmp_path: Path) -> None:
    """`timeouts.backendRequest` fires per try (504, flag UT) well before `timeouts.request`;
    a try that answers in time is untouched."""
    release = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/slow":
            await release.wait()
        return web.json_response({"path": request.path_qs, "host": request.headers["Host"]})

    async with serve_handler(handler) as app:
        out = free_port()
        r = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "api-tries", "namespace": NS},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "api",
                                      "port": 80}],
                      "rules": [{"timeouts": {"request": "30s", "backendRequest": "300ms"},
                                 "backendRefs": [{"name": "api", "port": 80}]}]}}
        async with running_control_plane() as cp:
            status, body = await apply(
                cp.api_url, workload("web-0", free_port(), 1, out, app="web"),
                workload("api-0", free_port(), app, free_port(), app="api"),
                service("api", app="api"), r)
            assert status == 200, body
            proxies = [await subscribe([cp.stream_port], WorkloadInfo(
                name=n, namespace=NS, address="127.0.0.1"), cache_dir=tmp_path)
                for n in ("web-0", "api-0")]
            try:
                async def routed() -> bool:
                    try:
                        return (await h1(out, "/fast"))[0] == 200
                    except aiohttp.ClientConnectionError:
                        return False
                await eventually(routed, timeout=5.0)
                loop = asyncio.get_running_loop()
                for call in (h1, h2):
                    t0 = loop.time()
                    status, _, got = await call(out, "/slow")
                    took = loop.time() - t0
                    assert status == 504 and b"try timed out" in got, (call, status, got)
                    assert 0.25 < took < 5.0, took  # the try's 300ms, not the request's 30s
                    assert (await call(out, "/fast"))[0] == 200
            finally:
                release.set()
                for p in proxies:
                    await p.stop()


async def test_request_mirror_copies_requests_and_never_slows_them(tmp_path: Path) -> None:
    """Every request to /m is copied to the shadow Service (authority `api-shadow`, body
    included); the shadow never answering does not slow the main request."""
    copies: list[tuple[str, str, bytes]] = []
    got_copy = asyncio.Event()
    release = asyncio.Event()

    async def shadow_handler(request: web.Request) -> web.Response:
        copies.append((request.path_qs, request.headers["Host"], await request.read()))
        got_copy.set()
        await release.wait()  # a mirror that never answers (until the test ends)
        return web.Response(text="shadow")

    async def main_handler(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path_qs, "host": request.headers["Host"],
                                  "body": (await request.read()).decode()})

    async with serve_handler(main_handler) as app, serve_handler(shadow_handler) as sh:
        out = free_port()
        r = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "api-mirror", "namespace": NS},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "api",
                                      "port": 80}],
                      "rules": [{"filters": [{"type": "RequestMirror", "requestMirror": {
                          "backendRef": {"name": "shadow", "port": 80}}}],
                          "backendRefs": [{"name": "api", "port": 80}]}]}}
        async with running_control_plane() as cp:
            status, body = await apply(
                cp.api_url, workload("web-0", free_port(), 1, out, app="web"),
                workload("api-0", free_port(), app, free_port(), app="api"),
                workload("shadow-0", free_port(), sh, free_port(), app="shadow"),
                service("api", app="api"), service("shadow", app="shadow"), r)
            assert status == 200, body
            proxies = [await subscribe([cp.stream_port], WorkloadInfo(
                name=n, namespace=NS, address="127.0.0.1"), cache_dir=tmp_path)
                for n in ("web-0", "api-0", "shadow-0")]
            try:
                async def routed() -> bool:
                    try:
                        return (await h1(out, "/warm"))[0] == 200 and bool(copies)
                    except aiohttp.ClientConnectionError:
                        return False
                await eventually(routed, timeout=5.0)
                copies.clear()
                async with aiohttp.ClientSession() as s, s.post(
                        f"http://127.0.0.1:{out}/m?q=1", headers={"Host": "api"},
                        data=b"payload") as resp:
                    assert resp.status == 200  # while the shadow still holds its copy
                    assert await resp.json() == {"path": "/m?q=1", "host": "api",
                                                 "body": "payload"}
                # (a late copy of a warm-up request may land first: the mirror is fire and
                # forget, and its first hop to the shadow opens an mTLS connection)
                await eventually(lambda: [c for c in copies if c[0] != "/warm"], timeout=5.0)
                assert [c for c in copies if c[0] != "/warm"] == [
                    ("/m?q=1", "api-shadow", b"payload")]
                status, _, echoed = await h2(out, "/m2")
                assert status == 200 and echoed["path"] == "/m2"
                await eventually(lambda: len([c for c in copies if c[0] != "/warm"]) == 2,
                                 timeout=5.0)
                assert [c[:2] for c in copies if c[0] != "/warm"][1] == ("/m2", "api-shadow")
            finally:
                release.set()
                for p in proxies:
                    await p.stop()


async def test_a_mirror_to_another_namespace_needs_its_consent(tmp_path: Path) -> None:
    """A mirror to Service `shadow` in namespace `qa`: without a ReferenceGrant in `qa` the rule
    is refused (the route's status says why, nothing is copied); with one, requests are copied
    there (Gateway API: a cross-namespace reference needs the target namespace's consent)."""
    copies: list[str] = []

    async def shadow_handler(request: web.Request) -> web.Response:
        copies.append(request.path_qs)
        return web.Response(text="shadow")

    async def main_handler(request: web.Request) -> web.Response:
        return web.Response(text="main")

    grant = {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
             "metadata": {"name": "shop-mirrors", "namespace": "qa"},
             "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                                "namespace": NS}],
                      "to": [{"group": "", "kind": "Service", "name": "shadow"}]}}
    async with serve_handler(main_handler) as app, serve_handler(shadow_handler) as sh:
        out = free_port()
        r = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "api-mirror", "namespace": NS},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "api",
                                      "port": 80}],
                      "rules": [{"filters": [{"type": "RequestMirror", "requestMirror": {
                          "backendRef": {"name": "shadow", "namespace": "qa", "port": 80}}}],
                          "backendRefs": [{"name": "api", "port": 80}]}]}}
        async with running_control_plane() as cp:
            status, body = await apply(
                cp.api_url, workload("web-0", free_port(), 1, out, app="web"),
                workload("api-0", free_port(), app, free_port(), app="api"),
                workload("shadow-0", free_port(), sh, free_port(), ns="qa", app="shadow"),
                service("api", app="api"), service("shadow", ns="qa", app="shadow"), r)
            assert status == 200, body
            [res] = body["results"][-1:]
            assert any("no ReferenceGrant in qa lets HTTPRoutes in shop" in w
                       for w in res.get("warnings") or []), res
            proxies = [await subscribe([cp.stream_port], WorkloadInfo(
                name=n, namespace=ns, address="127.0.0.1"), cache_dir=tmp_path)
                for n, ns in (("web-0", NS), ("api-0", NS), ("shadow-0", "qa"))]
            try:
                async def answered() -> int:
                    try:
                        return (await h1(out, "/before"))[0]
                    except aiohttp.ClientConnectionError:
                        return 0
                # the rule is left out: the route matches nothing else, so 404 (GAMMA)
                await eventually(lambda: answered(), timeout=5.0)
                assert copies == []
                status, body = await apply(cp.api_url, grant)
                assert status == 200, body

                async def copied() -> bool:
                    await answered()
                    return bool(copies)

                await eventually(copied, timeout=10.0)
                assert all(c.startswith("/before") for c in copies)
            finally:
                for p in proxies:
                    await p.stop()


async def test_backend_ref_filters_apply_only_to_the_backend_picked(tmp_path: Path) -> None:
    """A 1:1 split where only the v2 backendRef has header modifiers: requests that reach v2
    carry its request header and come back with its response header; v1's never do."""
    def origin(name: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            return web.json_response({"name": name,
                                      "canary": request.headers.get("x-canary")})
        return handler

    async with serve_handler(origin("v1")) as v1, serve_handler(origin("v2")) as v2:
        out = free_port()
        r = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "api-split", "namespace": NS},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "api",
                                      "port": 80}],
                      "rules": [{"backendRefs": [
                          {"name": "api", "port": 80, "weight": 1},
                          {"name": "api-v2", "port": 80, "weight": 1, "filters": [
                              {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                                  "set": [{"name": "X-Canary", "value": "true"}]}},
                              {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                                  "add": [{"name": "X-Served-By", "value": "v2"}]}}]}]}]}}
        async with running_control_plane() as cp:
            status, body = await apply(
                cp.api_url, workload("web-0", free_port(), 1, out, app="web"),
                workload("api-0", free_port(), v1, free_port(), app="api"),
                workload("api-v2-0", free_port(), v2, free_port(), app="api-v2"),
                service("api", app="api"), service("api-v2", app="api-v2"), r)
            assert status == 200, body
            proxies = [await subscribe([cp.stream_port], WorkloadInfo(
                name=n, namespace=NS, address="127.0.0.1"), cache_dir=tmp_path)
                for n in ("web-0", "api-0", "api-v2-0")]
            try:
                seen: dict[str, list[tuple[str | None, str | None]]] = {"v1": [], "v2": []}

                async def one() -> None:
                    async with aiohttp.ClientSession() as s, s.get(
                            f"http://127.0.0.1:{out}/x", headers={"Host": "api"}) as resp:
                        if resp.status == 200:
                            got = await resp.json()
                            seen[got["name"]].append((got["canary"],
                                                      resp.headers.get("X-Served-By")))

                async def both() -> bool:
                    try:
                        await one()
                    except aiohttp.ClientConnectionError:
                        return False
                    return bool(seen["v1"] and seen["v2"])
                await eventually(both, timeout=5.0)
                for _ in range(20):
                    await one()
                assert seen["v2"] and all(s == ("true", "v2") for s in seen["v2"]), seen
                assert seen["v1"] and all(s == (None, None) for s in seen["v1"]), seen
            finally:
                for p in proxies:
                    await p.stop()


async def test_a_grpcroute_mirror_copies_calls_over_http2(tmp_path: Path) -> None:
    """GRPCRoute `RequestMirror` (grpcio client and server): every call is answered by the
    real backend while a copy goes, over HTTP/2, to a shadow that never answers."""
    out = free_port()
    with running_grpc_server("v1") as p1:
        async with running_h2_origin() as (shadow_port, shadow):
            docs = [
                backend("greeter-v1-0", p1, app="greeter"),
                backend("shadow-0", shadow_port, app="shadow"),
                client("web-0", NS, out),
                grpc_service("greeter", app="greeter"), grpc_service("shadow", app="shadow"),
                grpc_route([{"filters": [{"type": "RequestMirror", "requestMirror": {
                    "backendRef": {"name": "shadow", "port": 80}}}],
                    "backendRefs": [{"name": "greeter", "port": 80}]}]),
            ]
            async with mesh(tmp_path, docs, {"web-0": (NS, out)}):
                with _channel(out) as ch:
                    async def mirrored() -> bool:
                        return (await asyncio.to_thread(who, ch)) == "v1" and bool(
                            shadow.requests)
                    await eventually(mirrored, timeout=5.0)
                    before = shadow.requests
                    for _ in range(5):
                        assert await asyncio.to_thread(who, ch, timeout=2) == "v1"
                    await eventually(lambda: shadow.requests == before + 5, timeout=5.0)
