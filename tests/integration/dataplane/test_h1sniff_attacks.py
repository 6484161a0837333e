"""Hostile clients on an `auto` listener, whose HTTP/1 connections are served by the object that
sniffed them (`H1SniffDownstream`, ADR 0073).

The sniffed path must be exactly as strict as an `http1` listener: each case sends raw bytes,
whole or a byte at a time across the detection boundary, and checks the status, that the
error is counted, that the origin (a raw server recording every head) received nothing it
should not have, and that a client connected beside it is still served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from tests.support.logsink import log_config
from tests.support.proxy import RunningProxy, running_proxy, simple_config
from tests.support.rawservers import (
    RawServer,
    closed_by_peer,
    connect,
    cut_off,
    named_origin,
    raw_server,
    read_response_within,
    rst,
)

from tulle.dataplane.protocols.detect import H2_PREFACE

pytestmark = pytest.mark.both_loops

H = b"GET / HTTP/1.1\r\nHost: a\r\n"

SMUGGLING = {
    "cl_and_te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate_cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n"
                    b"\r\nabcd",
    "obs_fold": H + b"X-A: b\r\n c\r\n\r\n",
    "bare_lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare_lf_in_headers": H + b"X-A: b\nX-B: c\r\n\r\n",
}

SPLITS = ["whole", "bytewise"]
"""How the first bytes arrive: in one segment, or the first eight one segment each."""


@contextlib.asynccontextmanager
async def auto_proxy(**settings: Any) -> AsyncIterator[tuple[RunningProxy, RawServer]]:
    """An `auto` listener in front of a raw origin that records every request head."""
    async with raw_server(named_origin(b"origin")) as srv:
        cfg = simple_config(srv.port, protocol="auto", settings=settings or None)
        async with running_proxy(cfg) as p:
            yield p, srv


async def send(w: asyncio.StreamWriter, wire: bytes, split: str) -> None:
    if split == "bytewise":
        for i in range(8):  # each its own segment: detection sees one byte more each time
            w.write(wire[i:i + 1])
            await w.drain()
            await asyncio.sleep(0.01)
        wire = wire[8:]
    w.write(wire)
    await w.drain()


@contextlib.asynccontextmanager
async def bystander(p: RunningProxy,
                    srv: RawServer) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """A keep-alive client connected before the hostile one; call it to check it is served."""
    r, w = await connect(p.port())

    async def check() -> None:
        w.write(b"GET /bystander HTTP/1.1\r\nHost: a\r\n\r\n")
        resp = await read_response_within(r)
        assert (resp.status, resp.body) == (200, b"origin")

    try:
        yield check
    finally:
        w.close()


def heads(srv: RawServer) -> list[bytes]:
    """The request-lines the origin received, the bystander's left out."""
    return [h.split(b"\r\n", 1)[0] for h in srv.requests if b"/bystander" not in h]


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("name", sorted(SMUGGLING))
async def test_smuggling_shapes_get_400_and_never_reach_the_origin(name: str,
                                                                   split: str) -> None:
    async with auto_proxy() as (p, srv), bystander(p, srv) as check:
        r, w = await connect(p.port())
        await send(w, SMUGGLING[name], split)
        resp = await read_response_within(r)
        assert resp.status == 400
        assert await closed_by_peer(r)
        w.close()
        assert p.metric("tulle_proxy_protocol_errors_total", kind="malformed_request") == 1
        assert p.metric("tulle_proxy_protocol_detected_total", protocol="http1") == 1
        await check()  # (the bystander's is the second connection detected as HTTP/1)
        assert heads(srv) == []


@pytest.mark.parametrize("name", sorted(SMUGGLING))
async def test_a_smuggled_request_behind_a_good_one_in_the_first_segment(name: str) -> None:
    """As on an `http1` listener: the good request is answered, then the connection closes
    (the bad bytes followed a request in flight), and the origin saw only the good one."""
    async with auto_proxy() as (p, srv):
        r, w = await connect(p.port())
        w.write(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n" + SMUGGLING[name])
        first = await read_response_within(r)
        assert (first.status, first.body) == (200, b"origin")
        assert await closed_by_peer(r)
        w.close()
        assert p.metric("tulle_proxy_protocol_errors_total", kind="malformed_request") == 1
        assert heads(srv) == [b"GET /first HTTP/1.1"]


async def test_pipelined_requests_in_the_first_segment_are_served_in_order() -> None:
    async with auto_proxy() as (p, srv):
        r, w = await connect(p.port())
        w.write(b"".join(b"GET /%d HTTP/1.1\r\nHost: a\r\n\r\n" % i for i in range(5)))
        for _ in range(5):
            resp = await read_response_within(r)
            assert (resp.status, resp.body) == (200, b"origin")
        w.close()
        assert heads(srv) == [b"GET /%d HTTP/1.1" % i for i in range(5)]
        assert p.metric("tulle_proxy_protocol_detected_total", protocol="http1") == 1


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("wire", [
    pytest.param(b"GET /" + b"a" * 8000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", id="long_line"),
    pytest.param(b"GET /" + b"a" * 8000, id="long_line_unfinished"),
    pytest.param(H + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 60) for i in range(100)) + b"\r\n",
                 id="many_headers"),
])
async def test_oversized_heads_while_sniffing_get_431(wire: bytes, split: str) -> None:
    async with auto_proxy(max_request_header_bytes=4096) as (p, srv), \
            bystander(p, srv) as check:
        r, w = await connect(p.port())
        await send(w, wire, split)
        assert (await read_response_within(r)).status == 431
        assert await closed_by_peer(r)
        w.close()
        assert p.metric("tulle_proxy_protocol_errors_total", kind="header_too_large") == 1
        await check()
        assert heads(srv) == []


async def test_a_method_token_that_never_ends_is_refused_by_the_http1_parser() -> None:
    """Detection buffers a token up to its cap (16 KiB), then the HTTP/1 parser answers it."""
    async with auto_proxy() as (p, srv), bystander(p, srv) as check:
        r, w = await connect(p.port())
        w.write(b"G" * 20_000)
        resp = await read_response_within(r)
        assert resp.status in (400, 431)
        assert await closed_by_peer(r)
        w.close()
        await check()
        assert heads(srv) == []


async def test_a_flood_of_connections_that_never_send_is_closed_at_the_deadline() -> None:
    """300 clients that say nothing on a listener with no TCP target: each is closed when
    detection gives up, the listener keeps serving HTTP, and nothing stays registered."""
    async with raw_server(named_origin(b"origin")) as srv:
        cfg = simple_config(srv.port, protocol="auto")
        cfg["listeners"][0]["detect_timeout_ms"] = 200
        async with running_proxy(cfg) as p:
            loop = asyncio.get_running_loop()
            start = loop.time()
            silent = [await connect(p.port()) for _ in range(300)]
            for r, _w in silent:
                assert await asyncio.wait_for(closed_by_peer(r), 10)
            assert loop.time() - start >= 0.19
            assert p.metric("tulle_proxy_protocol_detected_total", protocol="timeout") == 300
            assert p.metric("tulle_proxy_upstream_connections_total") == 0
            r, w = await connect(p.port())
            w.write(b"GET /after HTTP/1.1\r\nHost: a\r\n\r\n")
            assert (await read_response_within(r)).status == 200
            w.close()
            for _r, w in silent:
                w.close()
            end = loop.time() + 5
            while p.server.listeners["out"].connections:
                assert loop.time() < end
                await asyncio.sleep(0.01)
            assert p.metric("tulle_proxy_downstream_connections_active", listener="out") == 0


async def test_a_trickled_method_then_silence_meets_the_header_timeout() -> None:
    async with auto_proxy(header_timeout_ms=300) as (p, srv):
        r, w = await connect(p.port())
        await send(w, b"GET / HT", "bytewise")  # then nothing: a slowloris
        resp = await read_response_within(r, 5)
        assert resp.status == 408
        assert await closed_by_peer(r)
        w.close()
        assert p.metric("tulle_proxy_protocol_errors_total", kind="header_timeout") == 1
        assert heads(srv) == []


async def test_time_spent_sniffing_is_no_extra_time_for_a_slowloris() -> None:
    """One byte, a pause shorter than the detection timeout, the rest of a request-line, then
    silence: the 408 comes a header timeout after the *first* byte, as on an `http1` listener
    (the deadline counted from the decision gave the pause on top: 3.5 s here)."""
    async with auto_proxy(header_timeout_ms=2000) as (p, srv):
        r, w = await connect(p.port())
        loop = asyncio.get_running_loop()
        w.write(b"G")
        await w.drain()
        first = loop.time()
        await asyncio.sleep(1.5)
        w.write(b"ET / HTTP/1.1\r\n")  # decided HTTP/1 here; then nothing
        await w.drain()
        resp = await read_response_within(r, 6)
        waited = loop.time() - first
        assert resp.status == 408
        assert 1.9 < waited < 3.0, waited  # 2 s, plus at most one sweeper tick (0.5 s)
        w.close()
        assert heads(srv) == []


@pytest.mark.parametrize("split", SPLITS)
async def test_the_h2_preface_split_at_the_boundary_is_http2(split: str) -> None:
    async with auto_proxy() as (p, srv):
        r, w = await connect(p.port())
        await send(w, H2_PREFACE, split)
        frame = await asyncio.wait_for(r.readexactly(9), 5)
        assert frame[3] == 0x4  # the server's SETTINGS
        w.close()
        assert p.metric("tulle_proxy_protocol_detected_total", protocol="http2") == 1
        assert p.metric("tulle_proxy_protocol_detected_total", protocol="http1") == 0


async def test_a_preface_that_turns_into_http1_meets_the_http1_parser() -> None:
    async with auto_proxy() as (p, srv):
        r, w = await connect(p.port())
        await send(w, b"PRI * HTTP/1.1\r\nHost: a\r\n\r\n", "bytewise")
        assert (await read_response_within(r)).status in (400, 501, 505)
        assert await closed_by_peer(r)
        w.close()
        assert heads(srv) == []


async def test_tls_on_a_listener_without_a_tcp_target_is_refused() -> None:
    hello = (bytes.fromhex("160301002f0100002b0303") + bytes(32)
             + bytes.fromhex("000002130101000000"))
    async with auto_proxy() as (p, srv), bystander(p, srv) as check:
        r, w = await connect(p.port())
        await send(w, hello, "bytewise")
        assert await asyncio.wait_for(closed_by_peer(r), 5)
        w.close()
        assert p.metric("tulle_proxy_protocol_detected_total", protocol="tls") == 1
        assert p.metric("tulle_proxy_protocol_errors_total", kind="no_cluster") == 1
        await check()
        assert heads(srv) == []


async def test_a_lowered_detect_timeout_holds_no_silent_client_to_the_old_one() -> None:
    """A reload lowers `detect_timeout_ms` after an HTTP/1 client came and left the silence
    watch empty: a silent client is closed at the new deadline, not at the old one."""
    async with raw_server(named_origin(b"origin")) as srv:
        cfg = simple_config(srv.port, protocol="auto")
        cfg["listeners"][0]["detect_timeout_ms"] = 60_000
        async with running_proxy(cfg) as p:
            r, w = await connect(p.port())
            w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert (await read_response_within(r)).status == 200
            w.close()
            cfg["listeners"][0]["detect_timeout_ms"] = 100
            await p.apply(cfg)
            r, w = await connect(p.port())
            assert await asyncio.wait_for(closed_by_peer(r), 2)
            w.close()
            assert p.metric("tulle_proxy_protocol_detected_total", protocol="timeout") == 1


HELLO = (bytes.fromhex("160301002f0100002b0303") + bytes(32)
         + bytes.fromhex("000002130101000000"))

ENDINGS: dict[str, tuple[bytes, str]] = {
    # what the client sends, then how it ends: the proxy closes, the client closes, or resets
    "http1": (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "response"),
    "http2": (H2_PREFACE, "settings"),
    "tls": (HELLO, "closed"),
    "garbage": (b"\x00\x01junk", "closed"),
    "silence": (b"", "closed"),
    "eof_at_once": (b"", "eof"),
    "eof_mid_prefix": (b"GE", "eof"),
    "rst_mid_prefix": (b"GE", "rst"),
}


async def test_every_way_out_of_sniffing_releases_its_slot_once() -> None:
    """Each connection is admitted as the sniffing driver, and most are handed over: twice
    over, one of each kind on a listener whose limit is their number, then the listener is
    empty, its gauge at zero, and it serves exactly its limit again."""
    async with raw_server(named_origin(b"origin")) as srv:
        cfg = simple_config(srv.port, protocol="auto")
        cfg["listeners"][0].update(detect_timeout_ms=100, max_connections=len(ENDINGS))
        async with running_proxy(cfg) as p:
            handle = p.server.listeners["out"]
            loop = asyncio.get_running_loop()
            for _ in range(2):
                for wire, ending in ENDINGS.values():
                    r, w = await connect(p.port())
                    w.write(wire)
                    if ending == "response":
                        assert (await read_response_within(r)).status == 200
                    elif ending == "settings":
                        assert (await asyncio.wait_for(r.readexactly(9), 5))[3] == 0x4
                    elif ending == "eof":
                        w.write_eof()
                    if ending == "rst":
                        await asyncio.sleep(0.01)
                        rst(w)
                        continue
                    if ending in ("closed", "eof"):
                        assert await asyncio.wait_for(closed_by_peer(r), 5)
                    w.close()
                end = loop.time() + 5
                while handle.connections:
                    assert loop.time() < end
                    await asyncio.sleep(0.01)
                assert p.metric("tulle_proxy_downstream_connections_active", listener="out") == 0
                assert handle.guard.active == 0
            clients = [await connect(p.port()) for _ in ENDINGS]
            for r, w in clients:
                w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                assert (await read_response_within(r)).status == 200
            r, w = await connect(p.port())
            w.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            assert await cut_off(r)
            w.close()
            for _r, w in clients:
                w.close()
            assert p.metric("tulle_proxy_downstream_connections_overflow_total",
                            reason="listener_limit") == 1
            assert p.metric("tulle_proxy_downstream_connections_total",  # each counted once
                            listener="out") == 3 * len(ENDINGS)
            detected = {k: p.metric("tulle_proxy_protocol_detected_total", protocol=k)
                        for k in ("http1", "http2", "tls", "tcp", "timeout", "partial")}
            assert detected == {"http1": 2 + len(ENDINGS), "http2": 2, "tls": 2, "tcp": 2,
                                "timeout": 2, "partial": 2}


async def test_sniffed_connections_are_logged_once_each_as_what_they_turned_out_to_be(
        tmp_path: Path) -> None:
    """One flow record per HTTP connection, with its protocol, and one access record per
    request, whichever way the decision came: at the first bytes, a byte at a time, at the
    detection deadline (a fresh HTTP/1 driver), or HTTP/2.  A client that never spoke is no
    HTTP connection and has no record."""
    flows, access = tmp_path / "flow.log", tmp_path / "access.log"
    async with raw_server(named_origin(b"origin")) as srv:
        cfg = simple_config(srv.port, protocol="auto")
        cfg["listeners"][0]["detect_timeout_ms"] = 100
        cfg["telemetry"] = {"flow_log": log_config(flows), "access_log": log_config(access)}
        async with running_proxy(cfg) as p:
            r, w = await connect(p.port())
            await send(w, b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
                       "bytewise")
            for _ in range(2):
                assert (await read_response_within(r)).status == 200
            w.close()
            r, w = await connect(p.port())
            w.write(b"GE")  # then the detection deadline: the prefix goes to HTTP/1
            await asyncio.sleep(0.2)
            w.write(b"T /3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            assert (await read_response_within(r)).status == 200
            w.close()
            r, w = await connect(p.port())
            w.write(H2_PREFACE)
            assert (await asyncio.wait_for(r.readexactly(9), 5))[3] == 0x4
            w.close()
            r, w = await connect(p.port())
            assert await asyncio.wait_for(closed_by_peer(r), 5)  # silent: closed at the deadline
            w.close()
            handle = p.server.listeners["out"]
            end = asyncio.get_running_loop().time() + 5
            while handle.connections:
                assert asyncio.get_running_loop().time() < end
                await asyncio.sleep(0.01)
    flow = [json.loads(line) for line in flows.read_text().splitlines()]
    assert sorted(f["protocol"] for f in flow) == ["http1", "http1", "http2"]
    assert {(f["event"], f["listener"]) for f in flow} == {("end", "out")}
    paths = [json.loads(line)["path"] for line in access.read_text().splitlines()]
    assert sorted(paths) == ["/1", "/2", "/3"]


async def test_a_drain_closes_the_sniffing_in_order_and_lets_a_decided_request_finish() -> None:
    """Drain while one client sent a prefix, one sent nothing, one sent half a head just after
    the decision, and one has a request at a slow origin: the first three are closed at once
    and in order (an EOF, never a reset: the silent one may be a pool's connection opened
    ahead of its request), the request in flight is answered (and told to close), and the
    drain ends clean."""
    answer = asyncio.get_running_loop().create_future()

    async def slow(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        srv.requests.append(await r.readuntil(b"\r\n\r\n"))
        await answer
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow")
        await w.drain()

    async with raw_server(slow) as srv, running_proxy(simple_config(srv.port,
                                                                    protocol="auto")) as p:
        prefix, silent, half, busy = [await connect(p.port()) for _ in range(4)]
        prefix[1].write(b"GE")
        half[1].write(b"GET /half HTTP/1.1\r\nHo")
        busy[1].write(b"GET /busy HTTP/1.1\r\nHost: a\r\n\r\n")
        async with asyncio.timeout(5):
            while not srv.requests:
                await asyncio.sleep(0.01)
        drain = asyncio.ensure_future(p.server.drain(5))
        for r, _w in (prefix, silent, half):
            assert await asyncio.wait_for(r.read(1), 1) == b""  # (a reset raises)
        assert not drain.done()
        answer.set_result(None)
        resp = await read_response_within(busy[0])
        assert (resp.status, resp.body, resp.header(b"connection")) == (200, b"slow", b"close")
        assert await closed_by_peer(busy[0])
        for _r, w in (prefix, silent, half, busy):
            w.close()
        assert await asyncio.wait_for(drain, 3)
        assert p.metric("tulle_proxy_downstream_connections_active", listener="out") == 0
        assert heads(srv) == [b"GET /busy HTTP/1.1"]


async def test_a_request_that_races_a_drain_of_its_silent_connection_meets_an_eof() -> None:
    """A client that opened its connection ahead of its first request (a pool warming up) and
    sends that request just after the drain closed its side: what it sent is read and dropped
    (a lingering close), so it reads an orderly EOF and retries elsewhere, not a reset that the
    kernel answers data to a closed socket with.  Nothing reaches the origin."""
    async with raw_server(named_origin(b"origin")) as srv, running_proxy(
            simple_config(srv.port, protocol="auto")) as p:
        r, w = await connect(p.port())
        async with asyncio.timeout(5):
            while p.metric("tulle_proxy_downstream_connections_active", listener="out") < 1:
                await asyncio.sleep(0.01)
        drain = asyncio.ensure_future(p.server.drain(5))
        await asyncio.sleep(0.1)  # the proxy's FIN is on its way, unread by the client
        w.write(b"GET /raced HTTP/1.1\r\nHost: a\r\n\r\n")
        await w.drain()
        await asyncio.sleep(0.1)  # a reset, if one came, has come
        sock = w.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0  # no reset
        assert await asyncio.wait_for(r.read(1), 1) == b""  # (a reset raises)
        w.close()
        assert await asyncio.wait_for(drain, 3)
        assert srv.requests == []
