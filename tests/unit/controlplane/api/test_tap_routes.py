"""`GET /api/v1/tap` (ADR 0056): `status` as a code, a class or a range; the Mesh's say
(`Mesh.spec.observability.tap`) through the route on a bare ASGI app."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi import FastAPI

from tulle.controlplane.api.api_tokens import TOKEN_API_VERSION, TOKEN_KIND, Principal, Role
from tulle.controlplane.api.tap_routes import add_tap_routes, parse_status
from tulle.controlplane.store.memory import MemoryStore
from tulle.controlplane.telemetry.tap import TapBroker


@pytest.mark.parametrize(("text", "want"), [
    ("503", (503, 503)), ("5xx", (500, 599)), ("2XX", (200, 299)), ("500-504", (500, 504)),
])
def test_status_forms(text: str, want: tuple[int, int]) -> None:
    assert parse_status(text) == want


@pytest.mark.parametrize("text", ["6xx", "99", "600", "504-500", "abc", "", "5x", "1e3"])
def test_bad_status_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_status(text)






def mesh(**tap: Any) -> dict[str, Any]:
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
            "metadata": {"name": "default"}, "spec": {"observability": {"tap": tap}}}


class Call:
    """One GET through the ASGI app, read as it streams."""

    def __init__(self, app: FastAPI, query: str, role: Role = Role.ADMIN) -> None:
        self.out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.gone = asyncio.Event()
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
                 "http_version": "1.1", "method": "GET", "scheme": "http",
                 "path": "/api/v1/tap", "raw_path": b"/api/v1/tap",
                 "query_string": query.encode(), "headers": [], "client": ("127.0.0.1", 1),
                 "server": ("127.0.0.1", 80), "root_path": "",
                 "tulle.principal": Principal("token:test", role)}
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await self.gone.wait()
            return {"type": "http.disconnect"}

        async def send(msg: dict[str, Any]) -> None:
            await self.out.put(msg)

        self.task = asyncio.get_running_loop().create_task(app(scope, receive, send))

    async def status(self) -> int:
        start = await asyncio.wait_for(self.out.get(), 5)
        return int(start["status"])

    async def body(self) -> bytes:
        msg = await asyncio.wait_for(self.out.get(), 5)
        return bytes(msg.get("body", b""))

    async def close(self) -> None:
        self.gone.set()
        await asyncio.wait_for(self.task, 5)


async def app_with(store: MemoryStore) -> tuple[FastAPI, TapBroker]:
    """The tap routes over `store`, which holds the record of the calls' token `test` (a
    watch whose token is gone ends at its next heartbeat)."""
    await store.create({"apiVersion": TOKEN_API_VERSION, "kind": TOKEN_KIND,
                        "metadata": {"name": "test"}, "spec": {}})
    app = FastAPI()
    broker = TapBroker()
    add_tap_routes(app, broker, store, heartbeat=0.05)
    return app, broker


async def test_the_mesh_can_turn_taps_off_and_running_ones_end_at_the_next_renewal() -> None:
    store = MemoryStore()
    await store.create(mesh(enabled=False))
    app, broker = await app_with(store)
    c = Call(app, "kind=svc&name=api")
    assert await c.status() == 403
    assert b"tap.enabled" in await c.body()
    await c.close()

    current = await store.get("Mesh", None, "default")
    current["spec"]["observability"]["tap"] = {"enabled": True, "maxRate": 5}
    await store.update(current)
    c = Call(app, "kind=svc&name=api&rate=50", Role.READ_ONLY)
    assert await c.status() == 200
    started = json.loads(await c.body())
    assert started["type"] == "started" and started["rate"] == 5.0  # the mesh's ceiling
    assert len(broker.watches) == 1
    current = await store.get("Mesh", None, "default")
    current["spec"]["observability"]["tap"] = {"enabled": False}
    await store.update(current)
    ended = None
    for _ in range(100):  # bounded: heartbeats every 50 ms
        line = json.loads(await c.body())
        if line["type"] == "end":
            ended = line
            break
    assert ended is not None and "turned off" in ended["reason"]
    await c.close()
    assert broker.watches == {}


async def test_the_mesh_can_forbid_header_values_even_to_admins() -> None:
    store = MemoryStore()
    await store.create(mesh(headers=False))
    app, broker = await app_with(store)
    c = Call(app, "kind=svc&name=api&headers=true")
    assert await c.status() == 403
    assert b"tap.headers" in await c.body()
    await c.close()
    c = Call(app, "kind=svc&name=api&headers=true", Role.READ_ONLY)
    assert await c.status() == 403  # read-only: never
    await c.close()
    c = Call(app, "kind=svc&name=api")
    assert await c.status() == 200
    c.gone.set()  # the watcher goes: its tap is closed
    await asyncio.wait_for(c.task, 5)
    assert broker.watches == {}
