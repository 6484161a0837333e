"""`Mesh.spec.observability.tracing` end to end: applied over the REST API, compiled, pushed
over the proxy stream (and changed by a delta), it makes two real proxies trace a call over
mesh mTLS into a real OTLP receiver; a proxy that does not announce `tracing` is withheld it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from tests.support.controlplane import apply, eventually, running_control_plane, serve_handler
from tests.support.controlplane import subscribe as subscribe_proxy
from tests.support.otlp_receiver import running_receiver
from tests.support.proxy import free_port
from tests.support.resources import NS, service, workload

from tulle.proxyconfig.features import SUPPORTED
from tulle.proxyconfig.stream import WorkloadInfo


def mesh(tracing: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"observability": {"tracing": tracing}} if tracing else {}
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
            "metadata": {"name": "default"}, "spec": spec}


async def call(port: int) -> dict[str, str] | None:
    try:
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{port}/", headers={"Host": "api"}) as r:
            return await r.json() if r.status == 200 else None
    except aiohttp.ClientConnectionError:
        return None


async def test_the_mesh_turns_tracing_on_and_off_for_every_proxy(tmp_path: Path) -> None:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"traceparent": request.headers.get("traceparent", "")})

    async with serve_handler(echo) as app, running_receiver() as receiver, \
            running_control_plane() as cp:
        out = free_port()
        status, body = await apply(
            cp.api_url, mesh({"sampling": 100, "otlp": {"endpoint": receiver.url}}),
            workload("web-0", free_port(), 1, out, app="web"),
            workload("api-0", free_port(), app, free_port(), app="api"),
            service("api", app="api"))
        assert status == 200, body
        proxies = [await subscribe_proxy([cp.stream_port], WorkloadInfo(
            name=n, namespace=NS, address="127.0.0.1"), cache_dir=tmp_path)
            for n in ("web-0", "api-0")]
        try:
            async def traced() -> bool:
                got = await call(out)
                return bool(got and got["traceparent"].endswith("-01"))
            await eventually(traced, timeout=10.0)
            trace_id = (await call(out) or {})["traceparent"].split("-")[1]
            while True:
                spans = {rs.resource.attributes[0].value.string_value: s
                         for e in receiver.exports for rs in e.message.resource_spans
                         for ss in rs.scope_spans for s in ss.spans
                         if s.trace_id.hex() == trace_id}
                if len(spans) == 2:
                    break
                await receiver.wait_for(len(receiver.exports) + 1)
            # service.name: each proxy's own (the node's service, from its `app` label).
            assert set(spans) == {"api", "web"}, set(spans)
            assert spans["api"].parent_span_id == spans["web"].span_id

            # Tracing off: a delta removes it, the app sees no trace context any more.
            status, body = await apply(cp.api_url, mesh(None))
            assert status == 200, body

            async def untraced() -> bool:
                got = await call(out)
                return got is not None and got["traceparent"] == ""
            await eventually(untraced, timeout=10.0)
        finally:
            for p in proxies:
                await p.stop()


async def test_a_proxy_without_the_feature_is_withheld_tracing(tmp_path: Path) -> None:
    async with running_control_plane() as cp:
        status, body = await apply(
            cp.api_url, mesh({"sampling": 5}),
            workload("web-0", free_port(), free_port(), free_port(), app="web"))
        assert status == 200, body
        old = await subscribe_proxy([cp.stream_port], WorkloadInfo(
            name="web-0", namespace=NS, address="127.0.0.1"), cache_dir=tmp_path,
            features=[f for f in SUPPORTED if f != "tracing"])
        try:
            def got_config() -> bool:
                return old.server.config is not None
            await eventually(got_config, timeout=10.0)
            cfg = old.server.config
            assert cfg is not None
            assert cfg.telemetry.tracing is None
            assert all(c.tracer is None for c in (
                h.ctx for h in old.server.listeners.values()))
        finally:
            await old.stop()
