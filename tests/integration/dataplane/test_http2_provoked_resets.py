"""Resets the client provokes count against the premature-reset budget (MadeYouReset,
CVE-2025-8671), found by an outside review of the HTTP/2 hardening.

The rapid-reset budget counted only RST_STREAM frames the client sent.  A client that instead
makes the *proxy* reset each stream (malformed trailers, DATA after END_STREAM, a stream window
pushed past 2^31-1) got every request dispatched upstream and dropped, without limit: 2,000
streams on one connection opened 2,000 upstream connections, and the connection was never
closed.  Each case: GOAWAY(ENHANCE_YOUR_CALM) after about the budget (100), the origin saw at
most that many requests, the metric counted it once, and a fresh client is still served.
"""

from __future__ import annotations

import asyncio

import pytest
from tests.support import h2raw
from tests.support.h2raw import RawH2, request
from tests.support.proxy import running_proxy, simple_config
from tests.support.rawservers import RawServer, raw_server

from tulle.dataplane.protocols.h2engine import ENGINE

ENHANCE_YOUR_CALM = 0xB
STREAM_CLOSED = 0x5


async def hold_all_but_after(srv: RawServer, r: asyncio.StreamReader,
                             w: asyncio.StreamWriter) -> None:
    """Records every request head; answers only /after, so attack streams stay unanswered."""
    while True:
        head = await r.readuntil(b"\r\n\r\n")
        srv.requests.append(head)
        if head.startswith(b"GET /after "):
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await w.drain()


def provoke(kind: str, c: RawH2, sid: int) -> bytes:
    if kind == "bad_trailers":
        return h2raw.frame(h2raw.HEADERS, h2raw.END_HEADERS | h2raw.END_STREAM, sid,
                           c.encoder.encode([(b"x(bad", b"1")]))
    if kind == "data_after_end":
        return h2raw.data(sid, b"x")
    return h2raw.window_update(sid, 0x7FFFFFFF)  # window overflow: FLOW_CONTROL_ERROR


@pytest.mark.parametrize("kind", ["bad_trailers", "data_after_end", "window_overflow"])
async def test_resets_the_client_provokes_are_premature_resets(kind: str) -> None:
    async with raw_server(hold_all_but_after) as srv, running_proxy(
            simple_config(srv.port, protocol="http2")) as p:
        c = await RawH2.connect(p.port())
        for _ in range(15):  # 15 rounds of 20 streams: 300 > the budget of 100
            sids = []
            for _ in range(20):
                sid, raw = c.headers_frame(request("POST" if kind == "bad_trailers" else "GET",
                                                   "/attack"), end=kind != "bad_trailers")
                c.write(raw)
                sids.append(sid)
            want = len(srv.requests) + 20
            async with asyncio.timeout(3):  # each request reached the origin: dispatched
                while len(srv.requests) < want and not c.closed.is_set():
                    await asyncio.sleep(0.005)
            c.write(b"".join(provoke(kind, c, sid) for sid in sids))
            if c.closed.is_set():
                break
        await c.wait_closed()
        if ENGINE == "nghttp2" and kind == "data_after_end":
            # nghttp2 makes DATA on a half-closed stream a connection error: the first round
            # ends the connection, nothing to budget
            assert c.goaway_code == STREAM_CLOSED and len(srv.requests) <= 20
            assert p.metric("tulle_proxy_protocol_errors_total", kind="h2_protocol_error") == 1
        else:
            assert c.goaway_code == ENHANCE_YOUR_CALM
            assert p.metric("tulle_proxy_protocol_errors_total", kind="h2_rapid_reset") == 1
        assert len(srv.requests) <= 100 + 20  # the budget, and the round that blew it
        fresh = await RawH2.connect(p.port())
        sid = fresh.headers(request("GET", "/after"))
        await fresh.wait_stream(sid)
        assert fresh.status.get(sid) == 200 and bytes(fresh.body[sid]) == b"ok"
        fresh.close()
