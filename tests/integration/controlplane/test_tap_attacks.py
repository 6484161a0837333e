"""Attack review A2 (ADR 0060) of live tap and the API's new doors, through a real control
plane with a real sidecar and a raw stream peer admitted the supported way.

- a proxy (buggy or hostile) that answers a tap with header values the watcher never asked
  for, or with megabyte fields: the watcher -- a read-only token -- gets neither;
- one read-only token cannot hold every tap slot (and lock the admins out for an hour);
- a read-only caller's path cannot forge a control-plane log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from pathlib import Path

import aiohttp
import pytest
from tests.integration.controlplane.test_negotiation import RawProxy
from tests.integration.controlplane.test_stat import NS, Mesh, running_mesh
from tests.integration.controlplane.test_tap import broker, watching
from tests.support.controlplane import auth, eventually

from tulle.controlplane.telemetry.tap import MAX_WATCHES_PER_READER
from tulle.proxyconfig.features import SUPPORTED
from tulle.proxyconfig.stream import Ack, Hello, Snapshot, TapEvents, TapStart, WorkloadInfo, encode
from tulle.proxyconfig.tap import MAX_FIELD, TapRecord


async def read_only(m: Mesh) -> dict[str, str]:
    async with aiohttp.ClientSession() as s, s.post(
            f"{m.cp.api_url}/api/v1/api-tokens", headers=auth(m.cp.api_url),
            json={"role": "read-only", "name": "viewer"}) as r:
        assert r.status == 201
        return {"Authorization": f"Bearer {(await r.json())['token']}"}


async def admitted_raw_proxy(m: Mesh, name: str) -> RawProxy:
    raw = await RawProxy.connect(m.cp.stream_port, Hello(
        workload=WorkloadInfo(name=name, namespace=NS, address="127.0.0.11"),
        features=list(SUPPORTED)), api=m.cp.api_url)
    for _ in range(10):
        msg = await raw.next()
        if isinstance(msg, Snapshot):
            raw.writer.write(encode(Ack(version=msg.version)))
            return raw
    raise AssertionError("no snapshot")


async def next_tap_start(raw: RawProxy) -> TapStart:
    for _ in range(20):
        msg = await raw.next()
        if isinstance(msg, TapStart):
            return msg
    raise AssertionError("no TapStart")


SECRET = "Bearer s3cret-token"
HUGE = "/" + "a" * 1_000_000


async def test_a_proxy_cannot_hand_a_watcher_headers_it_did_not_ask_for_or_huge_fields(
        tmp_path: Path) -> None:
    async with running_mesh(tmp_path, clients=("a",)) as m:
        raw = await admitted_raw_proxy(m, "b-0")
        try:
            reader = await read_only(m)
            async with watching(m, reader, kind="wl", name="b-0", namespace=NS) as w:
                start = await next_tap_start(raw)
                assert start.headers is False
                forged = TapRecord(ts_ms=1, direction="inbound", workload="shop/b-0",
                                   method="GET", path=HUGE, authority=HUGE,
                                   headers=[("authorization", SECRET), ("x-a", "1")])
                raw.writer.write(encode(TapEvents(id=start.id, records=[forged])))
                (r,) = await w.requests(1)
                assert "headers" not in r, r.get("headers")
                assert len(r["path"]) <= MAX_FIELD + 3 and len(r["authority"]) <= MAX_FIELD + 3
            # An admin asking for headers still never sees a credential's value.
            async with watching(m, kind="wl", name="b-0", namespace=NS, headers="true") as w:
                start = await next_tap_start(raw)
                while not start.headers:  # (the first watch's stop and renewals may come first)
                    start = await next_tap_start(raw)
                forged = TapRecord(ts_ms=1, direction="inbound", workload="shop/b-0",
                                   method="GET", path="/", headers=[("Authorization", SECRET),
                                                                    ("x-a", "1")])
                raw.writer.write(encode(TapEvents(id=start.id, records=[forged])))
                (r,) = await w.requests(1)
                assert r["headers"] == [["authorization", "<redacted>"], ["x-a", "1"]]
        finally:
            raw.close()


async def test_a_proxy_cannot_hand_a_watcher_a_grpc_status_that_is_not_one(
        tmp_path: Path) -> None:
    """ADR 0119: a record's `grpc_status` is a gRPC code (`0`..`16`) or empty.  A proxy that
    sends anything else (here terminal escapes) has its message refused whole, as any
    malformed stream message: its stream ends, the watcher never sees the value, and the
    control plane keeps serving the watcher."""
    async with running_mesh(tmp_path, clients=("a",)) as m:
        raw = await admitted_raw_proxy(m, "b-0")
        try:
            async with watching(m, kind="wl", name="b-0", namespace=NS) as w:
                start = await next_tap_start(raw)
                good = TapRecord(ts_ms=1, direction="inbound", workload="shop/b-0",
                                 method="POST", path="/ok", status=200, grpc_status="14")
                raw.writer.write(encode(TapEvents(id=start.id, records=[good])))
                (r,) = await w.requests(1)
                assert (r["path"], r["grpc_status"]) == ("/ok", "14")
                forged = TapRecord(ts_ms=1, direction="inbound", workload="shop/b-0",
                                   method="POST", path="/forged", status=200,
                                   grpc_status="0\x1b[2J")
                raw.writer.write(encode(TapEvents(id=start.id, records=[forged])))
                for _ in range(20):  # the control plane ends the stream (EOF), bounded
                    if await raw.next() is None:
                        break
                else:
                    raise AssertionError("the stream stayed open")
                # The watcher is still served (the proxy is gone from the tap) and never got
                # the forged record.
                item = await w.next()
                while item["type"] == "heartbeat":
                    item = await w.next(15)
                assert item["type"] == "proxy-gone", item
                assert not [i for i in w.items if i.get("path") == "/forged"]
        finally:
            raw.close()


async def test_one_read_only_token_cannot_take_every_tap_slot(tmp_path: Path) -> None:
    async with running_mesh(tmp_path, clients=("a",)) as m:
        reader = await read_only(m)
        q = {"kind": "deploy", "name": "a", "namespace": NS}
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(MAX_WATCHES_PER_READER):
                await stack.enter_async_context(watching(m, reader, **q))
            async with aiohttp.ClientSession(headers=reader) as s, s.get(
                    f"{m.cp.api_url}/api/v1/tap", params=q) as r:
                assert r.status == 429
                assert "read-only" in (await r.json())["error"]
            async with watching(m, **q) as w:  # an admin still gets one
                assert w.items[0]["type"] == "started"
        await eventually(lambda: not broker(m).watches)


async def test_a_read_only_callers_path_cannot_forge_a_log_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with running_mesh(tmp_path, clients=("a",)) as m:
        reader = await read_only(m)
        caplog.set_level(logging.INFO, "tulle.controlplane.api.auth")
        forged = ("/api/v1/api-tokens/x%0A2026-12-03%20INFO%20admin%20token%20rotated%1B[2J"
                  + "b" * 9000)
        host, port = m.cp.api_url.removeprefix("http://").rsplit(":", 1)
        r, wr = await asyncio.open_connection(host, int(port))
        wr.write(f"GET {forged} HTTP/1.1\r\nHost: x\r\nAuthorization: {reader['Authorization']}"
                 f"\r\nConnection: close\r\n\r\n".encode())
        answer = await asyncio.wait_for(r.read(), 10)
        wr.close()
        assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
        lines = [rec.getMessage() for rec in caplog.records if "forbidden" in rec.getMessage()]
        assert lines, [rec.getMessage() for rec in caplog.records]
        for text in lines:
            assert "\n" not in text and "\x1b" not in text and len(text) < 1000, text[:300]


async def test_a_watcher_that_never_reads_costs_a_bounded_queue(tmp_path: Path) -> None:
    """Held: the response blocks on the unread socket, the watch's queue stays at `QUEUE`
    and the rest is counted as dropped; the control plane keeps answering."""
    from tulle.controlplane.telemetry.tap import QUEUE

    async with running_mesh(tmp_path, clients=("a",)) as m:
        raw = await admitted_raw_proxy(m, "b-0")
        host, port = m.cp.api_url.removeprefix("http://").rsplit(":", 1)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
        r, w = await asyncio.open_connection(sock=sock)
        try:
            w.write(f"GET /api/v1/tap?kind=wl&name=b-0&namespace={NS} HTTP/1.1\r\nHost: x\r\n"
                    f"Authorization: {auth(m.cp.api_url)['Authorization']}\r\n\r\n".encode())
            start = await next_tap_start(raw)
            record = TapRecord(ts_ms=1, direction="inbound", workload="shop/b-0",
                               method="GET", path="/" + "p" * 1000)
            (watch,) = broker(m).watches.values()
            batch = encode(TapEvents(id=start.id, records=[record] * 100))
            for _ in range(400):  # at most 40,000 records of ~1.1 KB; nobody reads them
                raw.writer.write(batch)
                await raw.writer.drain()
                await asyncio.sleep(0)
                assert watch.queue.qsize() <= QUEUE
                if watch.dropped:
                    break
            await eventually(lambda: watch.dropped > 0, timeout=20)
            assert watch.queue.qsize() <= QUEUE
            async with aiohttp.ClientSession() as s, s.get(f"{m.cp.api_url}/healthz") as resp:
                assert resp.status == 200
        finally:
            w.close()
            raw.close()
        await eventually(lambda: not broker(m).watches, timeout=20)
