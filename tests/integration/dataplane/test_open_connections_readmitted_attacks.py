"""Attacks on the swap's second look at open connections (ADRs 0127, 0129), through a real
proxy in process and raw peers that record what reaches them.

What a refused connection still carries when the swap lands: an HTTP/1 request pipelined
behind the response in flight, an upgrade whose 101 has not come back yet, a chunked upload
half sent, an HTTP/2 stream whose DATA still flows and new streams opened before the client
read the GOAWAY.  The refusal must hold for all of it whatever happens to the listener after
it: a swap that also replaces the listener's server (its old connections keep the old
context), or a second swap that admits the source again.

The listener and the stand-in for SO_ORIGINAL_DST are `test_open_connections_readmitted`'s: a
node agent's pod listener, clients from 127.0.0.1 (kept) and 127.0.0.2 (dropped)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tests.integration.dataplane.test_open_connections_readmitted import (
    CUT,
    KEPT,
    VIP,
    Redirects,
    half_then_rest,
    pod,
    pod_proxy,
    redirects,
)
from tests.support.h2raw import data, request
from tests.support.rawservers import RawServer, raw_server, read_response_within

pytestmark = pytest.mark.both_loops
__all__ = ["redirects"]  # (the fixture, imported to be found)

REFUSED = b"connection no longer admitted on listener pod: source_refused\n"
TWO = b"GET /1 HTTP/1.1\r\nhost: svc\r\n\r\nGET /2 HTTP/1.1\r\nhost: svc\r\n\r\n"


async def chunked_body(r: asyncio.StreamReader) -> bytes:
    body = b""
    while size := int((await r.readuntil(b"\r\n")).strip(), 16):
        body += (await r.readexactly(size + 2))[:-2]
    await r.readexactly(2)
    return body


async def requests_seen(origin: RawServer, n: int = 1) -> None:
    async with asyncio.timeout(5):
        while len(origin.requests) < n:
            await asyncio.sleep(0.01)


async def pipelined_then_403(s: Any, go_on: asyncio.Event) -> None:
    """The response in flight finishes, the request pipelined behind it is answered 403 and
    the connection closes."""
    go_on.set()
    assert await asyncio.wait_for(s.r.readexactly(5), 5) == b"-half"
    resp = await read_response_within(s.r, 5)
    assert (resp.status, resp.body, resp.header(b"connection")) == (403, REFUSED, b"close")
    assert await s.cut_within(2)


async def test_a_pipelined_request_on_a_replaced_listener_is_refused_not_forwarded(
        redirects: Redirects) -> None:
    """The swap that narrows `sources` also changes what selects the driver (`protocol`), so
    the listener gets a new server and its old connections drain under their old context:
    the request pipelined behind the response in flight was routed by that context and sent
    to the origin (before: `assert 2 == 1` requests, a 200)."""
    go_on, slow = half_then_rest()
    async with raw_server(slow) as origin, \
            pod_proxy(pod(origin.port, ["127.0.0.0/8"])) as (p, port):
        s = await redirects.stream(port, CUT, VIP)
        s.w.write(TWO)
        await asyncio.wait_for(s.r.readuntil(b"first"), 5)
        replaced = pod(origin.port, [f"{KEPT}/32"])
        replaced["listeners"][0]["protocol"] = "http1"
        await p.apply(replaced)
        await pipelined_then_403(s, go_on)
        assert len(origin.requests) == 1
        assert p.metric("tulle_proxy_http_config_closes_total", reason="source_refused") == 1


async def test_a_refusal_holds_when_the_next_swap_admits_the_source_again(
        redirects: Redirects) -> None:
    """Narrowed, then widened back before the pipelined request was dispatched: the connection
    was refused and is ending; what it still carries gets that refusal, not the widened
    config's routing (before: the request reached the origin -- or got 403 -- depending only
    on whether the second swap came before its turn)."""
    go_on, slow = half_then_rest()
    async with raw_server(slow) as origin, \
            pod_proxy(pod(origin.port, ["127.0.0.0/8"])) as (p, port):
        s = await redirects.stream(port, CUT, VIP)
        s.w.write(TWO)
        await asyncio.wait_for(s.r.readuntil(b"first"), 5)
        await p.apply(pod(origin.port, [f"{KEPT}/32"]))
        await p.apply(pod(origin.port, ["127.0.0.0/8"]))
        await pipelined_then_403(s, go_on)
        assert len(origin.requests) == 1
        # A new connection from that source is admitted by the config in force.
        again = await redirects.stream(port, CUT, VIP)
        again.w.write(b"GET /3 HTTP/1.1\r\nhost: svc\r\n\r\n")
        assert (await read_response_within(again.r, 5)).status == 200
        again.close()


async def test_an_upgrade_in_flight_at_the_swap_gets_no_tunnel(redirects: Redirects) -> None:
    """The Upgrade request was routed before the swap and its 101 comes after: an open tunnel
    is cut at the swap, so one opened now would carry the refused client's bytes for as long
    as it likes (before: the tunnel opened and echoed).  The client gets the 403 instead of
    the 101; the origin's side of the tunnel is closed and sees none of the client's bytes."""
    go_on = asyncio.Event()
    saw: list[bytes] = []
    closed = asyncio.Event()

    async def late_upgrader(srv: RawServer, r: asyncio.StreamReader,
                            w: asyncio.StreamWriter) -> None:
        srv.requests.append(await r.readuntil(b"\r\n\r\n"))
        await go_on.wait()
        w.write(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: foo\r\n\r\n")
        await w.drain()
        try:
            while chunk := await r.read(100):
                saw.append(chunk)
                w.write(b"echo:" + chunk)
        finally:
            closed.set()

    async with raw_server(late_upgrader) as origin, \
            pod_proxy(pod(origin.port, ["127.0.0.0/8"])) as (p, port):
        s = await redirects.stream(port, CUT, VIP)
        s.w.write(b"GET /ws HTTP/1.1\r\nhost: svc\r\nconnection: upgrade\r\nupgrade: foo\r\n\r\n")
        await requests_seen(origin)
        await p.apply(pod(origin.port, [f"{KEPT}/32"]))
        go_on.set()
        resp = await read_response_within(s.r, 5)
        assert (resp.status, resp.body, resp.header(b"connection")) == (403, REFUSED, b"close")
        await s.write_after(b"ping")
        assert await s.cut_within(2)
        await asyncio.wait_for(closed.wait(), 2)
        assert saw == []
        assert p.metric("tulle_proxy_http_config_closes_total", reason="source_refused") == 1


async def test_a_chunked_upload_in_flight_finishes_and_nothing_after_it_is_forwarded(
        redirects: Redirects) -> None:
    """Guard: the upload the swap lands in was admitted when it was routed and reaches the
    origin whole; its answer says `Connection: close`; a request sent behind it never reaches
    the origin."""
    bodies: list[bytes] = []

    async def reader(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            srv.requests.append(await r.readuntil(b"\r\n\r\n"))
            bodies.append(await chunked_body(r))
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await w.drain()

    async with raw_server(reader) as origin, \
            pod_proxy(pod(origin.port, ["127.0.0.0/8"])) as (p, port):
        s = await redirects.stream(port, CUT, VIP)
        s.w.write(b"POST /up HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n")
        await requests_seen(origin)
        await p.apply(pod(origin.port, [f"{KEPT}/32"]))
        s.w.write(b"6\r\n world\r\n0\r\n\r\nGET /2 HTTP/1.1\r\nhost: svc\r\n\r\n")
        resp = await read_response_within(s.r, 5)
        assert (resp.status, resp.body, resp.header(b"connection")) == (200, b"ok", b"close")
        assert await s.cut_within(2)
        assert bodies == [b"hello world"] and len(origin.requests) == 1


async def test_http2_streams_opened_after_the_goaway_are_never_forwarded(
        redirects: Redirects) -> None:
    """Guard: the stream whose DATA still flows when the swap lands finishes with its whole
    body; streams the client opens right after (before it read the GOAWAY, whose last stream
    is 1) reach no origin -- refused (`REFUSED_STREAM`, the h2 engine) or ignored (nghttp2,
    RFC 9113 6.8) -- and the connection closes."""
    go_on = asyncio.Event()
    bodies: list[bytes] = []

    async def origin_h1(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            srv.requests.append(head)
            if b"transfer-encoding" in head.lower():
                bodies.append(await chunked_body(r))
            await go_on.wait()
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await w.drain()

    async with raw_server(origin_h1) as origin, \
            pod_proxy(pod(origin.port, ["127.0.0.0/8"])) as (p, port):
        c = await redirects.h2(port, CUT, VIP)
        sid = c.headers(request("POST", "/up"), end=False)
        c.write(data(sid, b"hello"))
        await requests_seen(origin)
        await p.apply(pod(origin.port, [f"{KEPT}/32"]))
        c.write(data(sid, b" world", end=True))
        later = [c.headers(request("GET", f"/later{i}")) for i in range(3)]
        go_on.set()
        await c.wait_closed()
        assert c.status == {sid: 200} and bytes(c.body[sid]) == b"ok"
        assert c.goaways == [sid] and all(c.resets.get(s, 7) == 7 for s in later)
        assert bodies == [b"hello world"] and len(origin.requests) == 1
