"""PERMISSIVE -> STRICT with plaintext connections already open (audit, ADR 0108).

STRICT's documented answer to a plaintext client is a closed connection.  The switch only
reached new connections: a plaintext HTTP/1 connection opened under PERMISSIVE stayed open and
got `404 no route` on every later request (never `Connection: close`), and a plaintext opaque
TCP stream kept reaching the application for as long as it lasted.  Now the swap drains them:
an idle HTTP connection is closed, a busy one finishes its response with `Connection: close`
and closes, a relay is closed.  Real `tulle control-plane run` and `tulle proxy run`
processes; the clients are raw sockets on the proxy's inbound ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from tests.integration.controlplane.test_authorization import tcp_echo
from tests.support.controlplane import (
    apply,
    control_plane_process,
    eventually,
    serve_handler,
)
from tests.support.proxy import free_port
from tests.support.rawservers import closed_by_peer, connect, read_response_within
from tests.support.sidecar_process import SidecarProcess, sidecar_processes

NS = "shop"


def _mesh(mode: str) -> dict[str, Any]:
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
            "metadata": {"name": "default"}, "spec": {"mtls": {"mode": mode}}}


def _workload(http: tuple[int, int], tcp: tuple[int, int]) -> dict[str, Any]:
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": "api-0", "namespace": NS, "labels": {"app": "api"}},
            "spec": {"address": "127.0.0.1",
                     "ports": [{"name": "http", "port": http[0], "targetPort": http[1]},
                               {"name": "tcp", "port": tcp[0], "targetPort": tcp[1]}]}}


@contextlib.asynccontextmanager
async def _slow_origin(started: asyncio.Event, release: asyncio.Event) -> AsyncIterator[int]:
    async def handler(request: web.Request) -> web.Response:
        if request.path == "/slow":
            started.set()
            await release.wait()
        return web.Response(text="ok")

    async with serve_handler(handler) as port:
        yield port


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: api\r\n\r\n".encode()


@pytest.mark.timeout(90)
async def test_strict_closes_the_plaintext_connections_permissive_let_in(tmp_path: Path) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    async with _slow_origin(started, release) as app, tcp_echo() as echo, \
            control_plane_process(f"sqlite:{tmp_path / 'cp.db'}", tmp_path) as cp:
        http, tcp = free_port(), free_port()
        status, body = await apply(cp.api, _mesh("PERMISSIVE"),
                                   _workload((http, app), (tcp, echo)))
        assert status == 200, body
        car = SidecarProcess(cp.api, cp.stream_port, "api-0", tmp_path,
                             ports=[("http", http, app), ("tcp", tcp, echo)],
                             labels={"app": "api"})
        async with sidecar_processes(car):
            # Three plaintext clients, let in by PERMISSIVE: an idle keep-alive connection, one
            # with a request in flight, and an opaque stream.
            idle_r, idle_w = await connect(http)
            idle_w.write(_get("/"))
            assert (await read_response_within(idle_r)).status == 200
            busy_r, busy_w = await connect(http)
            busy_w.write(_get("/slow"))
            await asyncio.wait_for(started.wait(), 10)
            tcp_r, tcp_w = await asyncio.open_connection("127.0.0.1", tcp)
            tcp_w.write(b"one")
            assert await asyncio.wait_for(tcp_r.readexactly(3), 5) == b"one"

            status, body = await apply(cp.api, _mesh("STRICT"))
            assert status == 200, body

            async def strict_in_force() -> bool:  # a new plaintext connection is refused
                r, w = await connect(http)
                try:
                    w.write(_get("/"))
                    return await asyncio.wait_for(closed_by_peer(r), 3)
                finally:
                    w.close()

            await eventually(strict_in_force, timeout=20)
            # The idle one is closed, not left for a 404 at its next request.
            assert await asyncio.wait_for(closed_by_peer(idle_r), 5), "idle connection left open"
            # The stream is closed both ways: the application is no longer reached.
            assert await asyncio.wait_for(tcp_r.read(), 5) == b"", \
                "plaintext TCP stream still relayed under STRICT"
            # The request in flight finishes, says `Connection: close`, and the connection
            # closes after it.
            release.set()
            resp = await read_response_within(busy_r)
            assert (resp.status, resp.body) == (200, b"ok")
            assert resp.header(b"connection") == b"close", resp.headers
            assert await asyncio.wait_for(closed_by_peer(busy_r), 5)
            assert "left the config drained" in car.log()


@pytest.mark.timeout(90)
async def test_an_opaque_stream_outlives_a_replaced_listener_only_where_it_has_a_way_in(
        tmp_path: Path) -> None:
    """DISABLED -> STRICT replaces the inbound listener (it gets filter chains), and a
    replaced listener's opaque relays ran on for as long as they lasted; now one the new
    listener would not take is closed.  A change that still takes plaintext (DISABLED <->
    PERMISSIVE) keeps the stream."""
    async with tcp_echo() as echo, \
            control_plane_process(f"sqlite:{tmp_path / 'cp.db'}", tmp_path) as cp:
        http, tcp = free_port(), free_port()
        status, body = await apply(cp.api, _mesh("DISABLED"), _workload((http, echo),
                                                                        (tcp, echo)))
        assert status == 200, body
        car = SidecarProcess(cp.api, cp.stream_port, "api-0", tmp_path,
                             ports=[("http", http, echo), ("tcp", tcp, echo)],
                             labels={"app": "api"})
        async with sidecar_processes(car):
            r, w = await asyncio.open_connection("127.0.0.1", tcp)

            async def echoes(data: bytes) -> bool:
                w.write(data)
                return await asyncio.wait_for(r.readexactly(len(data)), 5) == data

            async def chains(want: set[str]) -> bool:
                status, text = await car.admin("/config_dump")
                cfg = json.loads(text)
                listener = next(lc for lc in cfg["listeners"] if lc["port"] == tcp)
                return {c["name"] for c in listener.get("filter_chains", [])} == want

            assert await echoes(b"disabled")
            for mode, want in (("PERMISSIVE", {"mtls", "plaintext"}), ("DISABLED", set())):
                status, body = await apply(cp.api, _mesh(mode))
                assert status == 200, body
                await eventually(lambda want=want: chains(want), timeout=20)
                await asyncio.sleep(0.5)  # past the replaced listener's drain grace
                assert await echoes(mode.encode()), mode
            status, body = await apply(cp.api, _mesh("STRICT"))
            assert status == 200, body
            await eventually(lambda: chains({"mtls"}), timeout=20)
            assert await asyncio.wait_for(r.read(), 5) == b"", \
                "plaintext TCP stream still relayed after DISABLED -> STRICT"
            w.close()
