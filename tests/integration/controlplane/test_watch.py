"""The resource list watch (`?watch=true`, ADR 0104) through a real control plane's API on
real sockets: events in revision order with the list's filters, resume from the list's
revision, 410 on a compacted one, the token's role and revocation, the per-token cap, and a
watcher that does not read (a bounded queue, then the connection closed; a child process's
RSS as the measure).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.support.controlplane import (
    apply_until_not_409,
    auth,
    control_plane_on,
    control_plane_process,
    eventually,
    running_control_plane,
)
from tests.support.postgres import fresh_schema, postgres_server

from tulle.controlplane.api.watch_routes import WatchLimits
from tulle.controlplane.main import ControlPlane

__all__ = ["postgres_server"]  # the fixture, imported so that pytest finds it

SERVICES = "/api/v1/resources/services"


def svc(name: str, ns: str = "default", port: int = 80, note: str = "",
        **labels: str) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": ns}
    if labels:
        md["labels"] = labels
    if note:
        md["annotations"] = {"note": note}
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Service", "metadata": md,
            "spec": {"selector": {"app": name}, "ports": [{"port": port}]}}




async def delete(s: aiohttp.ClientSession, api: str, name: str, ns: str = "default") -> None:
    async with s.delete(f"{api}{SERVICES}/{name}", params={"namespace": ns}) as r:
        assert r.status == 200, await r.text()


class Watch:
    """One watch request; `next()` is the next event line (heartbeats skipped or kept)."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp

    async def next(self, timeout: float = 5.0, beats: bool = False) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                line = await self.resp.content.readline()
                if not line:
                    return {"type": "<end>"}
                if line.strip() or beats:
                    return json.loads(line) if line.strip() else {"type": "<beat>"}

    async def expect(self, type_: str, name: str, timeout: float = 5.0,
                     check: Any = None) -> dict[str, Any]:
        """The next event, which must be `type_` of `name` (and pass `check`); MODIFIED events
        in between are skipped when they are not the one wanted: the control plane writes
        statuses (a Service's virtual IP) after an apply."""
        while True:
            e = await self.next(timeout)
            got = (e["type"], (e.get("object") or {}).get("metadata", {}).get("name", ""))
            if got == (type_, name) and (check is None or check(e["object"])):
                return e
            assert got[0] == "MODIFIED", f"{got} before {(type_, name)}"


@contextlib.asynccontextmanager
async def watching(s: aiohttp.ClientSession, api: str, path: str = SERVICES,
                   **params: str) -> AsyncIterator[Watch]:
    async with s.get(f"{api}{path}", params={"watch": "true", **params}) as r:
        assert r.status == 200, await r.text()
        assert r.headers["content-type"].startswith("application/x-ndjson")
        yield Watch(r)


async def token(cp: ControlPlane, role: str = "read-only") -> tuple[str, str]:
    """(id, token) of a new API token."""
    async with aiohttp.ClientSession(headers=auth(cp.api_url)) as s, s.post(
            f"{cp.api_url}/api/v1/api-tokens", json={"role": role, "name": "w"}) as r:
        assert r.status == 201, await r.text()
        body = await r.json()
        return str(body["id"]), str(body["token"])




@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_an_object_created_and_deleted_within_100ms_shows_added_then_deleted(
        request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    async with control_plane_on(backend, request, tmp_path) as cp, \
            aiohttp.ClientSession(headers=auth(cp.api_url)) as s, \
            watching(s, cp.api_url) as w:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await apply_until_not_409(s, cp.api_url, svc("blink"))
        await delete(s, cp.api_url, "blink")
        assert loop.time() - t0 < 0.1 or backend == "postgres"  # (a slow CI PostgreSQL)
        first = await w.next()
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "blink")
        second = await w.expect("DELETED", "blink")  # (a status write may come between)
        assert int(second["object"]["metadata"]["resourceVersion"]) > int(
            first["object"]["metadata"]["resourceVersion"])


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_watch_from_the_lists_revision_replays_what_followed_then_modified(
        request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    async with control_plane_on(backend, request, tmp_path) as cp, \
            aiohttp.ClientSession(headers=auth(cp.api_url)) as s:
        await apply_until_not_409(s, cp.api_url, svc("before"))
        async with s.get(f"{cp.api_url}{SERVICES}") as r:
            listed = await r.json()
        rv = listed["metadata"]["resourceVersion"]
        assert [o["metadata"]["name"] for o in listed["items"]] == ["before"]
        await apply_until_not_409(s, cp.api_url, svc("after"))  # before the watch starts: replayed
        async with watching(s, cp.api_url, resourceVersion=rv) as w:
            await w.expect("ADDED", "after")
            await apply_until_not_409(s, cp.api_url, svc("before", port=81))
            await w.expect("MODIFIED", "before",
                           check=lambda o: o["spec"]["ports"][0]["port"] == 81)


async def test_the_lists_filters_hold_namespace_and_label_selector(tmp_path: Path) -> None:
    async with running_control_plane(f"sqlite:{tmp_path / 'cp.db'}") as cp, \
            aiohttp.ClientSession(headers=auth(cp.api_url)) as s, \
            watching(s, cp.api_url, namespace="a", labelSelector="tier=web") as w:
        await apply_until_not_409(s, cp.api_url, svc("other-ns", ns="b", tier="web"),
                    svc("other-label", ns="a", tier="db"), svc("web", ns="a", tier="web"))
        await w.expect("ADDED", "web")
        await apply_until_not_409(s, cp.api_url, svc("web", ns="a", tier="db"))  # leaves the selection
        await w.expect("DELETED", "web")
        await apply_until_not_409(s, cp.api_url, svc("other-label", ns="a", tier="web"))  # enters it
        await w.expect("ADDED", "other-label")
        await apply_until_not_409(s, cp.api_url, svc("other-label", ns="a", port=90, tier="web"))
        await w.expect("MODIFIED", "other-label")
        await delete(s, cp.api_url, "other-ns", ns="b")
        await delete(s, cp.api_url, "web", ns="a")  # not selected any more: not shown
        await delete(s, cp.api_url, "other-label", ns="a")
        await w.expect("DELETED", "other-label")


async def test_read_only_may_watch_anonymous_and_bad_parameters_may_not(
        tmp_path: Path) -> None:
    async with running_control_plane(f"sqlite:{tmp_path / 'cp.db'}") as cp:
        _, ro = await token(cp)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ro}"}) as s, \
                watching(s, cp.api_url) as w, \
                aiohttp.ClientSession(headers=auth(cp.api_url)) as admin:
            await apply_until_not_409(admin, cp.api_url, svc("seen"))
            await w.expect("ADDED", "seen")
        async with aiohttp.ClientSession() as anon, anon.get(
                f"{cp.api_url}{SERVICES}", params={"watch": "true"}) as r:
            assert r.status == 401
        async with aiohttp.ClientSession(headers=auth(cp.api_url)) as s:
            for params in ({"resourceVersion": "-1"}, {"resourceVersion": "x"},
                           {"resourceVersion": "9" * 30}, {"labelSelector": "a in (b"}):
                async with s.get(f"{cp.api_url}{SERVICES}",
                                 params={"watch": "true", **params}) as r:
                    assert r.status == 400, params


async def test_a_revoked_token_ends_the_watch_at_the_next_heartbeat(tmp_path: Path) -> None:
    async with running_control_plane(f"sqlite:{tmp_path / 'cp.db'}",
                                     api_watch=WatchLimits(heartbeat=0.3)) as cp:
        tid, ro = await token(cp)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ro}"}) as s, \
                watching(s, cp.api_url, allowWatchBookmarks="true") as w:
            beat = await w.next(2)
            assert beat["type"] == "BOOKMARK" and beat["object"]["metadata"]["resourceVersion"]
            async with aiohttp.ClientSession(headers=auth(cp.api_url)) as admin, \
                    admin.delete(f"{cp.api_url}/api/v1/api-tokens/{tid}") as r:
                assert r.status == 200, await r.text()
            while (e := await w.next(2))["type"] == "BOOKMARK":
                pass
            assert e["type"] == "ERROR" and e["object"]["code"] == 401
            assert (await w.next(2))["type"] == "<end>"


async def test_an_expired_resource_version_is_one_410_error_and_the_end(tmp_path: Path) -> None:
    async with running_control_plane(f"sqlite:{tmp_path / 'cp.db'}",
                                     store_changes_retained=5) as cp, \
            aiohttp.ClientSession(headers=auth(cp.api_url)) as s:
        for i in range(8):
            await apply_until_not_409(s, cp.api_url, svc(f"s{i}"))
        async with watching(s, cp.api_url, resourceVersion="1") as w:
            e = await w.next()
            assert e["type"] == "ERROR", e
            assert e["object"]["code"] == 410 and e["object"]["reason"] == "Expired"
            assert (await w.next())["type"] == "<end>"


async def test_one_token_holds_at_most_per_token_watches(tmp_path: Path) -> None:
    async with running_control_plane(f"sqlite:{tmp_path / 'cp.db'}",
                                     api_watch=WatchLimits(per_token=2)) as cp:
        _, ro = await token(cp)
        url = f"{cp.api_url}{SERVICES}?watch=true"
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {ro}"}) as s:
            first = await s.get(url)
            second = await s.get(url)
            assert (first.status, second.status) == (200, 200)
            async with s.get(url) as third:
                assert third.status == 429
                assert "at most 2" in (await third.json())["error"]
            async with aiohttp.ClientSession(headers=auth(cp.api_url)) as other, \
                    other.get(url) as r:
                assert r.status == 200  # another token has its own slots
            first.close()

            async def freed() -> bool:
                r = await s.get(url)
                ok = r.status == 200
                r.close()
                return ok
            await eventually(freed)
            second.close()


def _stalled_watch(port: int, token: str) -> socket.socket:
    """A watch over a socket with a small receive buffer that the test never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {SERVICES}?watch=true HTTP/1.1\r\nHost: x\r\n"
                 f"Authorization: Bearer {token}\r\n\r\n".encode())
    return sock


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionError):
        while chunk := sock.recv(1 << 20):
            data += chunk
    return data


async def test_a_watcher_that_falls_behind_is_ended_with_an_error(tmp_path: Path) -> None:
    """Its queue fills while it does not read; what it reads later ends with a 410 ERROR."""
    async with running_control_plane(f"sqlite:{tmp_path / 'cp.db'}",
                                     api_watch=WatchLimits(queue=20, stall=60)) as cp, \
            aiohttp.ClientSession(headers=auth(cp.api_url)) as s:
        sock = _stalled_watch(int(cp.api_url.rsplit(":", 1)[1]), cp.admin_token)
        try:
            await asyncio.sleep(0.2)
            note = "x" * 30_000
            for i in range(60):  # ~1.8 MB of events: more than the socket buffers hold
                await apply_until_not_409(s, cp.api_url, svc(f"s{i}", note=note))
            data = await asyncio.to_thread(_read_all, sock, 3)
        finally:
            sock.close()
        async with s.get(f"{cp.api_url}{SERVICES}") as r:
            head = int((await r.json())["metadata"]["resourceVersion"])
    lines = [json.loads(x) for x in data.split(b"\r\n") if x.startswith(b"{")]
    assert lines and lines[-1]["type"] == "ERROR", [x["type"] for x in lines[-3:]]
    assert lines[-1]["object"]["code"] == 410
    assert "fell behind" in lines[-1]["object"]["message"]
    delivered = max(int(x["object"]["metadata"]["resourceVersion"]) for x in lines[:-1])
    assert delivered < head  # what followed was not queued for it


async def test_a_watcher_that_stops_reading_is_closed_after_the_stall_bound(
        tmp_path: Path) -> None:
    logged: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: logged.append(record.getMessage())  # type: ignore[method-assign]
    async with running_control_plane(f"sqlite:{tmp_path / 'cp.db'}",
                                     api_watch=WatchLimits(stall=1.0, per_token=1)) as cp, \
            aiohttp.ClientSession(headers=auth(cp.api_url)) as s:
        # (after the start: uvicorn configures its loggers then; they do not propagate)
        logging.getLogger("uvicorn.error").addHandler(handler)
        sock = _stalled_watch(int(cp.api_url.rsplit(":", 1)[1]), cp.admin_token)
        try:
            await asyncio.sleep(0.2)
            note = "x" * 30_000
            for i in range(40):
                await apply_until_not_409(s, cp.api_url, svc(f"s{i}", note=note))

            async def slot_free() -> bool:  # the stalled watch gave its one slot back
                r = await s.get(f"{cp.api_url}{SERVICES}?watch=true")
                ok = r.status == 200
                r.close()
                return ok
            await eventually(slot_free, timeout=10)
            data = await asyncio.to_thread(_read_all, sock, 3)
            assert not data.endswith(b"0\r\n\r\n")  # cut, not a completed answer
        finally:
            sock.close()
    logging.getLogger("uvicorn.error").removeHandler(handler)
    assert not logged  # closed for the stall, not for an error uvicorn reports


@pytest.mark.timeout(120)
async def test_watchers_that_never_read_keep_the_control_planes_rss_bounded(
        tmp_path: Path) -> None:
    async with control_plane_process(f"sqlite:{tmp_path / 'cp.db'}", tmp_path) as cp, \
            aiohttp.ClientSession(headers=auth(cp.api)) as s:
        port = int(cp.api.rsplit(":", 1)[1])
        tok = auth(cp.api)["Authorization"].split()[1]
        note = "x" * 100_000
        for i in range(300):  # what applies alone cost (their objects, the store's caches)
            await apply_until_not_409(s, cp.api, svc(f"s{i % 50}", note=note + str(i)))
        socks = [_stalled_watch(port, tok) for _ in range(4)]
        try:
            await asyncio.sleep(0.3)
            before = cp.rss_kib()
            for i in range(300):  # 30 MB of events for each watcher
                await apply_until_not_409(s, cp.api, svc(f"s{i % 50}", note=note + "y" + str(i)))
            grown = cp.rss_kib() - before
            # Each watcher holds at most its queue (2 MiB) and the socket buffers; four that
            # held every event would be 120 MB.
            assert grown < 40 * 1024, f"RSS grew by {grown} KiB"
        finally:
            for sock in socks:
                sock.close()


async def test_a_watch_on_one_replica_sees_an_apply_on_another(
        postgres_server: Any) -> None:
    """Two control planes on one PostgreSQL (ADR 0008's NOTIFY between replicas)."""
    async with fresh_schema(postgres_server) as url, running_control_plane(url) as a, \
            running_control_plane(url) as b, \
            aiohttp.ClientSession(headers=auth(b.api_url)) as sb, \
            aiohttp.ClientSession(headers=auth(a.api_url)) as sa, \
            watching(sb, b.api_url) as w:
        await apply_until_not_409(sa, a.api_url, svc("from-a"))
        await w.expect("ADDED", "from-a")
