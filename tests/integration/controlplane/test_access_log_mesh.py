"""Access and flow logs end to end: `Mesh.spec.observability.accessLog` applied over the REST
API reaches every proxy through the stream, their requests are logged to the Mesh's file sink,
and the Mesh's status names the setting as in force."""

from __future__ import annotations

import json
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
from tests.support.resources import NS, service, workload

from tulle.proxyconfig.stream import WorkloadInfo


async def get(port: int, path: str) -> int | None:
    try:
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{port}{path}", headers={"Host": "api"}) as r:
            return r.status
    except aiohttp.ClientConnectionError:
        return None


async def test_a_mesh_access_log_reaches_every_proxy(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    mesh = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
            "metadata": {"name": "default"},
            "spec": {"observability": {"accessLog": {
                "sink": {"type": "file", "path": str(log), "flushInterval": "10ms"},
                "filter": {"statusMin": 200}}}}}

    async def handler(request: web.Request) -> web.Response:
        status = {"/teapot": 418, "/boom": 503}.get(request.path, 200)
        return web.Response(text="ok", status=status)

    async with serve_handler(handler) as app, running_control_plane() as cp:
        out = free_port()
        status, body = await apply(
            cp.api_url, mesh, workload("web-0", free_port(), 1, out, app="web"),
            workload("api-0", free_port(), app, free_port(), app="api"),
            service("api", app="api"))
        assert status == 200, body
        proxies = [await subscribe([cp.stream_port], WorkloadInfo(name=n, namespace=NS,
                                                                  address="127.0.0.1"),
                                   cache_dir=tmp_path) for n in ("web-0", "api-0")]
        try:
            async def routed() -> bool:
                return await get(out, "/ready") == 200
            await eventually(routed, timeout=5.0)
            assert await get(out, "/teapot") == 418
            # Each request crosses two proxies: web-0's outbound and api-0's inbound, both log.
            stored: dict[str, Any] = {}

            async def status_written() -> bool:
                nonlocal stored
                async with aiohttp.ClientSession(headers=auth(cp.api_url)) as s, s.get(
                        f"{cp.api_url}/api/v1/resources/meshes/default") as r:
                    stored = await r.json()
                return any(c["type"] == "SettingsApplied"
                           for c in (stored.get("status") or {}).get("conditions", []))
            await eventually(status_written, timeout=5.0)
            records: list[dict[str, Any]] = []

            async def teapots() -> bool:
                nonlocal records
                records = [json.loads(x) for x in log.read_text().splitlines()] \
                    if log.exists() else []
                return sum(1 for x in records if x["response_code"] == 418) == 2
            await eventually(teapots, timeout=5.0)

            # A change of the Mesh reaches running proxies (in a delta): only 5xx from now on.
            mesh["spec"]["observability"]["accessLog"]["filter"] = {"statusMin": 500}
            status, body = await apply(cp.api_url, mesh)
            assert status == 200, body

            async def only_errors() -> bool:
                """One /teapot then one /boom; True once neither proxy logged the 418 of this
                round.  Each proxy writes its lines in the order its requests ended, so when
                both 503 lines of the round are in the file, a 418 of the round logged by
                either is there too.  (A 503 is logged under the old filter as well: the
                first 503 in the file does not mark the new filter.)"""
                before = len(log.read_text().splitlines())
                assert await get(out, "/teapot") == 418
                assert await get(out, "/boom") == 503
                await eventually(lambda: sum('"response_code":503' in x for x in
                                             log.read_text().splitlines()[before:]) >= 2,
                                 timeout=5.0)
                new = [json.loads(x) for x in log.read_text().splitlines()[before:]]
                return not any(x["response_code"] == 418 for x in new)
            await eventually(only_errors, timeout=10.0)
            # Once the new filter is in force on both proxies, it stays: another round logs
            # its 503s and no 418.
            assert await only_errors()
        finally:
            for p in proxies:
                await p.stop()
    teapot = {x["direction"]: x for x in records if x["response_code"] == 418}
    assert sorted(teapot) == ["inbound", "outbound"]
    assert all(x["path"] == "/teapot" for x in teapot.values())
    assert len({x["request_id"] for x in teapot.values()}) == 1  # one request, both proxies
    # Over mesh mTLS: the caller's verified identity on the server's side, the identity the
    # server had to present on the client's.
    me = f"spiffe://cluster.local/ns/{NS}/sa/default"
    assert teapot["inbound"]["source_principal"] == me
    assert teapot["outbound"]["destination_principal"] == me
    # ... and each proxy's own side, named by the control plane (`telemetry.principal`).
    assert teapot["outbound"]["source_principal"] == me
    assert teapot["inbound"]["destination_principal"] == me
    conds = {c["type"]: c for c in stored["status"]["conditions"]}
    assert conds["SettingsApplied"]["status"] == "True"
    assert "observability.accessLog (to file)" in conds["SettingsApplied"]["message"]
