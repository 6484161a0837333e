"""One small mesh of real processes, for the tests that load it while something changes
(ADRs 0108, 0113, 0116): a `tulle control-plane run` on SQLite, a client sidecar `web-0`, and
the two endpoints `api-a` / `api-b` of Service `api` (each also a Service of its own, for
weighted routes), whose applications answer their name (`A`, `B`).

    async with api_mesh(tmp_path) as m, steady_load(m.url, "api", rate=240) as load:
        ...

Everything it starts is stopped on the way out, the control plane last (killed).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.controlplane import ControlPlaneProcess, apply, named_origin
from tests.support.proxy import free_port
from tests.support.sidecar_process import SidecarProcess, sidecar_processes

NS = "shop"
A, B = b'{"name": "a", "path": "/x"}', b'{"name": "b", "path": "/x"}'
"""What `api-a`'s and `api-b`'s applications answer to `GET /x`."""


def workload_doc(car: SidecarProcess, port: int | None = None, target: int | None = None,
                 ) -> dict[str, Any]:
    ports = [] if port is None else [{"name": "http", "port": port, "targetPort": target}]
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": car.name, "namespace": NS, "labels": car.labels},
            "spec": {"address": "127.0.0.1", "outboundPort": car.outbound_port, "ports": ports}}


def service_doc(name: str, **selector: str) -> dict[str, Any]:
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Service",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": selector,
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


@dataclass
class ApiMesh:
    cp: ControlPlaneProcess
    web: SidecarProcess
    api_a: SidecarProcess
    api_b: SidecarProcess

    @property
    def url(self) -> str:
        """`GET /x` through `web-0`'s outbound listener."""
        return f"http://127.0.0.1:{self.web.outbound_port}/x"

    async def web_endpoints(self) -> dict[str, int]:
        """How many endpoints `web-0` holds now in each cluster of `shop`'s Services (its
        admin `/clusters`): what it can reach, not what the control plane means to push."""
        status, text = await self.web.admin("/clusters")
        assert status == 200, text
        return {c["name"]: len(c["endpoints"]) for c in json.loads(text)
                if c["name"].endswith(f".{NS}")}

    async def web_reaches_all(self) -> bool:
        """`web-0` holds one endpoint in each of `api`'s, `api-a`'s and `api-b`'s clusters
        (`api` two): until then a request it routes to a missing one fails 503."""
        seen = await self.web_endpoints()
        return [seen.get(f"outbound|80||{s}.{NS}") for s in ("api", "api-a", "api-b")] == [
            2, 1, 1]


@contextlib.asynccontextmanager
async def api_mesh(tmp_path: Path, *docs: dict[str, Any]) -> AsyncIterator[ApiMesh]:
    """The mesh with `docs` (routes, policies) applied with it, its three sidecars started."""
    cp = ControlPlaneProcess(f"sqlite:{tmp_path / 'cp.db'}", tmp_path)
    cp.start()
    try:
        await cp.wait_ready()
        async with named_origin("a") as app_a, named_origin("b") as app_b:
            pa, pb = free_port(), free_port()
            web = SidecarProcess(cp.api, cp.stream_port, "web-0", tmp_path, labels={"app": "web"})
            api_a = SidecarProcess(cp.api, cp.stream_port, "api-a", tmp_path,
                                   ports=[("http", pa, app_a)], labels={"app": "api", "v": "a"})
            api_b = SidecarProcess(cp.api, cp.stream_port, "api-b", tmp_path,
                                   ports=[("http", pb, app_b)], labels={"app": "api", "v": "b"})
            status, body = await apply(
                cp.api, workload_doc(web), workload_doc(api_a, pa, app_a),
                workload_doc(api_b, pb, app_b), service_doc("api", app="api"),
                service_doc("api-a", v="a"), service_doc("api-b", v="b"), *docs)
            assert status == 200, body
            async with sidecar_processes(web, api_a, api_b):
                yield ApiMesh(cp, web, api_a, api_b)
    finally:
        cp.kill()
