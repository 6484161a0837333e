"""Header modifiers end to end: an HTTPRoute with RequestHeaderModifier and
ResponseHeaderModifier applied over the REST API reaches subscribed proxies, and traffic through
them shows the edits.  A proxy that announces no `http-filters` feature gets the rule without
its filters (its traffic is not edited) and the control plane says so in its status."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from tests.support.controlplane import (
    apply,
    auth,
    eventually,
    running_control_plane,
    serve_handler,
    subscribe,
)
from tests.support.proxy import free_port
from tests.support.resources import NS, route, service, workload

from tulle.proxyconfig.features import SUPPORTED
from tulle.proxyconfig.stream import WorkloadInfo


@contextlib.asynccontextmanager
async def headers_origin() -> AsyncIterator[int]:
    """Answers with the request headers it received, and an `x-debug` header of its own."""
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"headers": [[k.lower(), v] for k, v in
                                              request.headers.items()]},
                                 headers={"x-debug": "secret"})

    async with serve_handler(handler) as port:
        yield port


def filtered_route() -> dict[str, Any]:
    r = route("api-headers", ("/", "api"))
    r["spec"]["rules"][0]["filters"] = [
        {"type": "RequestHeaderModifier",
         "requestHeaderModifier": {"set": [{"name": "X-Env", "value": "prod"}],
                                   "remove": ["x-secret"]}},
        {"type": "ResponseHeaderModifier",
         "responseHeaderModifier": {"add": [{"name": "X-Mesh", "value": "tulle"}],
                                    "remove": ["x-debug"]}},
    ]
    return r


async def call(port: int) -> tuple[dict[str, str], dict[str, str]] | None:
    """(headers the origin saw, headers the client got), or None while not routed yet."""
    try:
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{port}/x", headers={"Host": "api", "X-Env": "dev",
                                                       "X-Secret": "s"}) as r:
            if r.status != 200:
                return None
            seen = {k: v for k, v in (await r.json())["headers"]}
            return seen, {k.lower(): v for k, v in r.headers.items()}
    except aiohttp.ClientConnectionError:
        return None


async def test_header_modifiers_from_an_httproute_reach_traffic(tmp_path: Path) -> None:
    async with headers_origin() as app:
        new_out, old_out = free_port(), free_port()
        async with running_control_plane() as cp:
            status, body = await apply(
                cp.api_url,
                workload("web-0", free_port(), 1, new_out, app="web"),
                workload("web-1", free_port(), 1, old_out, app="web"),
                workload("api-0", free_port(), app, free_port(), app="api"),
                service("api", app="api"), filtered_route())
            assert status == 200, body
            older = [f for f in SUPPORTED if f != "http-filters"]
            proxies = [
                await subscribe([cp.stream_port], WorkloadInfo(name=n, namespace=NS,
                                                               address="127.0.0.1"),
                                cache_dir=tmp_path, features=f)
                for n, f in (("web-0", None), ("web-1", older), ("api-0", None))]
            try:
                async def edited() -> bool:
                    got = await call(new_out)
                    return got is not None and got[0].get("x-env") == "prod"
                await eventually(edited, timeout=5.0)
                got = await call(new_out)
                assert got is not None
                seen, returned = got
                assert seen["x-env"] == "prod" and "x-secret" not in seen
                assert returned["x-mesh"] == "tulle" and "x-debug" not in returned

                # The older proxy: same route, no filters; its status says what it lacks.
                await eventually(lambda: call(old_out), timeout=5.0)
                got = await call(old_out)
                assert got is not None
                seen, returned = got
                assert seen["x-env"] == "dev" and seen["x-secret"] == "s"
                assert returned["x-debug"] == "secret" and "x-mesh" not in returned
                async with aiohttp.ClientSession(headers=auth(cp.api_url)) as s, s.get(
                        f"{cp.api_url}/api/v1/proxies") as r:
                    items = {p["name"]: p for p in (await r.json())["items"]}
                assert items["web-1"]["withheld"] == [{
                    "feature": "http-filters",
                    "paths": ["route_tables[].virtual_hosts[].rules[].filters"]}]
                assert items["web-0"]["withheld"] == []

                # The route's status no longer says the header filters are unsupported.
                async with aiohttp.ClientSession(headers=auth(cp.api_url)) as s, s.get(
                        f"{cp.api_url}/api/v1/resources/httproutes/api-headers",
                        params={"namespace": NS}) as r:
                    assert r.status == 200
                    text = await r.text()
                assert '"Accepted"' in text and "not supported" not in text
            finally:
                for p in proxies:
                    await p.stop()
