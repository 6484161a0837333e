"""A destination a transparent listener refuses (`Destination.refuse`, ADR 0114), on real sockets.

A node agent's pod listener runs with `passthrough` (the Mesh's `ALLOW_ANY`) and refuses a
meshed pod's address on the ports the pod does not declare: the agent would otherwise dial the
pod's application from the node, past the pod's inbound side.  The proxy is the production
`ProxyServer` on loopback; only the kernel's answer to SO_ORIGINAL_DST is stood in for (the
real redirect: `tests/e2e/test_node_agent.py`).  The "pod" is a raw server on 127.0.0.2 that
records every connection it gets; a "non-mesh" server on 127.0.0.1 must still be passed
through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.support.proxy import running_proxy
from tests.support.rawhttp import RawClient
from tests.support.rawservers import named_origin, raw_server

from tulle.dataplane.listeners import detect

POD = "127.0.0.2"


class Recorder:
    """A TCP server on `POD` that answers every line and remembers that it was reached."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Recorder:
        async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            self.connections += 1
            w.write(b"pod " + await r.readline())
            await w.drain()
            w.close()

        self._server = await asyncio.start_server(on_conn, POD, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def pod() -> AsyncIterator[Recorder]:
    async with Recorder() as r:
        yield r


def config(declared: int, cluster_port: int) -> dict[str, Any]:
    """A pod listener under ALLOW_ANY: the pod's declared port to a cluster, then its address
    refused on any other port, as the compiler renders a node agent's (ADR 0114)."""
    return {"listeners": [{
        "name": "shop/pod-a|outbound", "address": "127.0.0.1", "port": 0, "mode": "transparent",
        "protocol": "auto", "passthrough": True,
        "destinations": [{"address": POD, "port": declared, "cluster": "pod"},
                         {"address": POD, "refuse": True}]}],
        "clusters": [{"name": "pod", "endpoints": [{"address": "127.0.0.1",
                                                    "port": cluster_port}]}]}


async def test_a_refused_destination_is_closed_counted_and_logged_the_rest_pass(
        monkeypatch: pytest.MonkeyPatch, pod: Recorder,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "tulle.proxy")
    going_to: list[tuple[str, int]] = []
    monkeypatch.setattr(detect, "original_destination", lambda sock: going_to[-1])
    async with raw_server(named_origin(b"M")) as mesh_path, \
            raw_server(named_origin(b"N")) as non_mesh, \
            running_proxy(config(8080, mesh_path.port)) as p:
        port = p.port("shop/pod-a|outbound")
        # The pod's undeclared port (its application really listens there): reset, and the
        # application never sees a connection.
        going_to.append((POD, pod.port))
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(b"hello\n")
        try:
            got = await asyncio.wait_for(r.read(), 5)
        except ConnectionResetError:
            got = b""
        w.close()
        assert got == b"" and pod.connections == 0
        assert p.metric("tulle_proxy_protocol_errors_total", listener="shop/pod-a|outbound",
                        kind="destination_refused") == 1
        lines = [r.getMessage() for r in caplog.records if "refused an outbound" in
                 r.getMessage()]
        assert len(lines) == 1 and f"{POD}:{pod.port}" in lines[0], lines
        assert "not one it declares" in lines[0]
        # The declared port keeps its mesh path (its cluster).
        going_to.append((POD, 8080))
        client = await RawClient.connect(port)
        try:
            resp = await client.request("GET", "/declared")
            assert (resp.status, resp.body) == (200, b"M")
        finally:
            client.close()
        # Any other address still passes through to its original destination.
        going_to.append(("127.0.0.1", non_mesh.port))
        client = await RawClient.connect(port)
        try:
            resp = await client.request("GET", "/elsewhere")
            assert (resp.status, resp.body) == (200, b"N")
        finally:
            client.close()
        assert p.metric("tulle_proxy_protocol_errors_total", kind="no_destination") == 0
