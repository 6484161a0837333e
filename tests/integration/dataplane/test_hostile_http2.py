"""HTTP/2 abuse through a real proxy: rapid reset, control-frame floods, a client that does not
read, streams past the concurrency limit, and h2 -> HTTP/1 injection.

Each attack comes from a raw h2 client (frames written as given, tests/support/h2raw.py) at a
proxy in front of a raw HTTP/1 origin that records every request head it receives.  Each test
asserts what the origin received, what the client got (GOAWAY or RST_STREAM code), that the
listener still serves a fresh client, and the metric that counted the attack.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.support import h2raw
from tests.support.h2peers import running_h2_origin
from tests.support.h2raw import RawH2, request
from tests.support.proxy import RunningProxy, running_proxy, simple_config
from tests.support.rawservers import RawServer, raw_server

from tulle.dataplane.protocols.h2engine import ENGINE

ENHANCE_YOUR_CALM = 0xB
PROTOCOL_ERROR = 0x1
REFUSED_STREAM = 0x7


async def answer_each(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Keep-alive origin: records every request head (and a partial one at EOF), answers ok."""
    while True:
        try:
            head = await r.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                srv.requests.append(exc.partial)
            return
        srv.requests.append(head)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await w.drain()


@contextlib.asynccontextmanager
async def setup(**settings: Any) -> AsyncIterator[tuple[RawServer, RunningProxy]]:
    async with raw_server(answer_each) as srv, running_proxy(
            simple_config(srv.port, protocol="http2", settings=settings or None)) as p:
        yield srv, p


async def fresh_client_is_served(srv: RawServer, p: RunningProxy) -> None:
    """The listener still serves, and the origin receives exactly this request."""
    before = len(srv.requests)
    c = await RawH2.connect(p.port())
    sid = c.headers(request("GET", "/after"))
    await c.wait_stream(sid)
    assert c.status.get(sid) == 200 and bytes(c.body[sid]) == b"ok"
    assert [h.split(b"\r\n")[0] for h in srv.requests[before:]] == [b"GET /after HTTP/1.1"]
    c.close()


def calm_count(p: RunningProxy, kind: str) -> float:
    return p.metric("tulle_proxy_protocol_errors_total", kind=kind)


# -- rapid reset (CVE-2023-44487) ------------------------------------------------------------

async def test_rapid_reset_is_cut_off_and_opens_no_upstream_connection(
        caplog: pytest.LogCaptureFixture) -> None:
    async with setup() as (srv, p):
        c = await RawH2.connect(p.port())
        for _ in range(30):  # 30 writes of 20 HEADERS+RST_STREAM pairs: 600 > 100 allowed
            batch = b""
            for _ in range(20):
                sid, raw = c.headers_frame(request("GET", "/attack"))
                batch += raw + h2raw.rst(sid)
            c.write(batch)
            await asyncio.sleep(0)
            if c.closed.is_set():
                break
        await c.wait_closed()
        assert c.goaway_code == ENHANCE_YOUR_CALM
        assert c.next_sid < 600 * 2  # cut off before the end of the attack
        assert srv.connections == 0 and srv.requests == []  # every dial was cancelled
        assert calm_count(p, "h2_rapid_reset") == 1
        warnings = [r for r in caplog.records if "ENHANCE_YOUR_CALM" in r.getMessage()]
        assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
        await fresh_client_is_served(srv, p)


async def test_resets_below_the_budget_cancel_dials_and_keep_the_connection() -> None:
    async with setup() as (srv, p):
        c = await RawH2.connect(p.port())
        batch = b""
        for _ in range(20):
            sid, raw = c.headers_frame(request("GET", "/cancelled"))
            batch += raw + h2raw.rst(sid)
        c.write(batch)
        sid = c.headers(request("GET", "/after"))  # same connection: still served
        await c.wait_stream(sid)
        assert c.status[sid] == 200 and c.goaway_code is None
        assert [h.split(b"\r\n")[0] for h in srv.requests] == [b"GET /after HTTP/1.1"]
        assert srv.connections == 1
        assert calm_count(p, "h2_rapid_reset") == 0


async def test_rapid_reset_to_an_h2_upstream_costs_it_at_most_one_connection() -> None:
    async with running_h2_origin() as (port, origin), running_proxy(
            simple_config(port, protocol="http2", cluster_protocol="http2")) as p:
        c = await RawH2.connect(p.port())
        for _ in range(30):
            batch = b""
            for _ in range(20):
                sid, raw = c.headers_frame(request("GET", "/attack"))
                batch += raw + h2raw.rst(sid)
            c.write(batch)
            await asyncio.sleep(0)
            if c.closed.is_set():
                break
        await c.wait_closed()
        assert c.goaway_code == ENHANCE_YOUR_CALM
        assert origin.connections <= 1  # multiplexed: the waiting streams share one dial
        assert origin.requests <= 101  # bounded by the premature-reset budget
        assert calm_count(p, "h2_rapid_reset") == 1
        before = origin.requests
        fresh = await RawH2.connect(p.port())
        sid = fresh.headers(request("GET", "/after"))
        await fresh.wait_stream(sid)
        assert fresh.status[sid] == 200 and origin.requests == before + 1


# -- control-frame floods (CVE-2019-9512 / 9515 / 9518 class) --------------------------------

def _flood(kind: str, c: RawH2) -> bytes:
    if kind == "h2_ping_flood":
        return h2raw.ping() * 3000
    if kind == "h2_settings_flood":
        return h2raw.settings() * 3000
    if kind == "h2_window_update_flood":
        return h2raw.window_update(0, 1) * 3000
    if kind == "h2_priority_flood":
        return b"".join(h2raw.priority(2 * i + 101) for i in range(3000))
    if kind == "h2_unknown_frame_flood":
        return h2raw.frame(0xFA, 0, 0, b"x") * 3000
    if kind == "h2_continuation_flood":  # CVE-2024-27316: a header block that never ends
        sid = c.next_sid
        c.next_sid += 2
        head = h2raw.frame(h2raw.HEADERS, 0, sid, c.encoder.encode(request("GET", "/c")))
        return head + h2raw.frame(0x9, 0, sid, b"") * 3000
    assert kind == "h2_empty_frame_flood"
    sid, raw = c.headers_frame(request("POST", "/upload"), end=False)
    return raw + h2raw.data(sid) * 3000


@pytest.mark.parametrize("kind", ["h2_ping_flood", "h2_settings_flood", "h2_window_update_flood",
                                  "h2_priority_flood", "h2_unknown_frame_flood",
                                  "h2_empty_frame_flood",
                                  *(["h2_continuation_flood"] if ENGINE == "nghttp2" else [])])
async def test_control_frame_flood_gets_enhance_your_calm(kind: str) -> None:
    async with setup() as (srv, p):
        c = await RawH2.connect(p.port())
        c.write(_flood(kind, c))
        await c.wait_closed()
        assert c.goaway_code == ENHANCE_YOUR_CALM
        assert calm_count(p, kind) == 1
        if kind == "h2_empty_frame_flood":  # its stream was a request: at most its head arrived
            assert all(h.startswith(b"POST /upload ") for h in srv.requests)
            assert len(srv.requests) <= 1
        else:
            assert srv.connections == 0 and srv.requests == []
        await fresh_client_is_served(srv, p)


async def test_a_few_control_frames_with_requests_are_fine() -> None:
    async with setup() as (srv, p):
        c = await RawH2.connect(p.port())
        for i in range(5):
            c.write(h2raw.ping() * 50 + h2raw.settings() * 10 + h2raw.window_update(0, 1) * 50)
            sid = c.headers(request("GET", f"/r{i}"))
            await c.wait_stream(sid)
            assert c.status[sid] == 200
        assert c.goaway_code is None
        assert len(srv.requests) == 5


async def test_client_that_does_not_read_its_ping_acks_is_cut_off() -> None:
    # Generous frame budgets, so that only the outbound queue limit can trigger.
    async with setup(http2_control_frame_burst=1_000_000, http2_max_queued_control_frames=200,
                     buffer_high_water_bytes=4096) as (srv, p):
        c = await RawH2.connect(p.port(), rcvbuf=4096)
        await asyncio.sleep(0.05)  # the proxy's SETTINGS arrive and are acknowledged
        c.stop_reading()
        for _ in range(400):
            c.write(h2raw.ping() * 500)
            await asyncio.sleep(0)
            if calm_count(p, "h2_control_queue_flood"):
                break
        assert calm_count(p, "h2_control_queue_flood") == 1
        c.close()
        assert srv.connections == 0
        await fresh_client_is_served(srv, p)


# -- SETTINGS_MAX_CONCURRENT_STREAMS ---------------------------------------------------------

async def test_streams_past_the_limit_are_refused_and_the_connection_lives_on() -> None:
    release = asyncio.Event()

    async def hold(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            srv.requests.append(head)
            await release.wait()
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await w.drain()

    async with raw_server(hold) as srv, running_proxy(simple_config(
            srv.port, protocol="http2", settings={"http2_max_concurrent_streams": 4})) as p:
        c = await RawH2.connect(p.port())
        await asyncio.sleep(0.05)  # our SETTINGS ACK reached the proxy: the limit is in force
        sids = [c.headers(request("GET", f"/s{i}")) for i in range(7)]
        if ENGINE == "nghttp2":
            # nghttp2 refuses alone only streams past a limit not yet acknowledged; past the
            # acknowledged one it is a connection error (ADR 0051), before any dial
            await c.wait_closed()
            assert c.goaway_code == PROTOCOL_ERROR and srv.connections == 0
            release.set()
            return
        for sid in sids[4:]:
            await c.wait_stream(sid)
            assert c.resets[sid] == REFUSED_STREAM
        for _ in range(100):
            if len(srv.requests) == 4:
                break
            await asyncio.sleep(0.01)
        assert srv.connections == 4  # one client connection, at most 4 upstream connections
        release.set()
        for sid in sids[:4]:
            await c.wait_stream(sid)
            assert c.status[sid] == 200
        sid = c.headers(request("GET", "/later"))
        await c.wait_stream(sid)
        assert c.status[sid] == 200 and c.goaway_code is None
        assert len(srv.requests) == 5


# -- h2 -> HTTP/1 injection ------------------------------------------------------------------

MALFORMED = {
    "method with space": request("G T", "/"),
    "method smuggling": request("GET /admin HTTP/1.1", "/"),
    "path with space": request("GET", "/a b"),
    "absolute-form path": request("GET", "http://evil.test/x"),
    "authority-form path": request("GET", "evil.test:80"),
    "star for GET": request("GET", "*"),
    "path with control": request("GET", "/a\x01"),
    "userinfo": request("GET", "/", authority="user@example.test"),
    "authority with space": request("GET", "/", authority="a b"),
    "authority bad port": request("GET", "/", authority="a.test:8x"),
    "name not a token": request(extra=[(b"a(b", b"1")]),
    "name with slash": request(extra=[(b"x/y", b"1")]),
    "value with control": request(extra=[(b"x", b"a\x01b")]),
    "value with DEL": request(extra=[(b"x", b"a\x7fb")]),
}

MALFORMED_FOR_H2 = {
    "content-length not digits": request("POST", "/", extra=[(b"content-length", b"1_0")]),
    "content-length signed": request("POST", "/", extra=[(b"content-length", b"+5")]),
    "content-length conflict": request("POST", "/", extra=[(b"content-length", b"1"),
                                                           (b"content-length", b"2")]),
    "value with CRLF": request(extra=[(b"x", b"a\r\nx-injected: 1")]),
    "value with NUL": request(extra=[(b"x", b"a\x00b")]),
    "upper-case name": request(extra=[(b"X-Up", b"1")]),
    "connection header": request(extra=[(b"connection", b"close")]),
    "transfer-encoding": request(extra=[(b"transfer-encoding", b"chunked")]),
    "te not trailers": request(extra=[(b"te", b"gzip")]),
    "leading space in value": request(extra=[(b"x", b" a")]),
}
"""What h2 itself refuses, as a connection error (RFC 9113 5.4.1 allows treating a stream error
so): GOAWAY PROTOCOL_ERROR, and nothing reaches the origin either."""


STREAM_ERRORS = {**MALFORMED, **(MALFORMED_FOR_H2 if ENGINE == "nghttp2" else {})}
"""nghttp2 makes what h2 refuses as a connection error a stream error, as RFC 9113 8.1.1 says."""
CONNECTION_ERRORS = MALFORMED_FOR_H2 if ENGINE == "h2" else {}


@pytest.mark.parametrize("fields", STREAM_ERRORS.values(), ids=STREAM_ERRORS.keys())
async def test_malformed_request_is_reset_and_never_reaches_the_origin(
        fields: list[tuple[bytes, bytes]]) -> None:
    async with setup() as (srv, p):
        c = await RawH2.connect(p.port())
        sid = c.headers(fields, end=False)  # a body would follow (h2 checks a length on END)
        await c.wait_stream(sid)
        assert c.resets.get(sid) == PROTOCOL_ERROR and sid not in c.status
        assert calm_count(p, "h2_malformed_request") == 1
        sid = c.headers(request("GET", "/after"))  # a stream error: the connection goes on
        await c.wait_stream(sid)
        assert c.status[sid] == 200 and c.goaway_code is None
        assert [h.split(b"\r\n")[0] for h in srv.requests] == [b"GET /after HTTP/1.1"]


async def test_equal_repeated_content_length_is_forwarded_once() -> None:
    async with setup() as (srv, p):
        c = await RawH2.connect(p.port())
        sid = c.headers(request("POST", "/cl", extra=[(b"content-length", b"2"),
                                                      (b"content-length", b"2")]), end=False)
        c.write(h2raw.data(sid, b"hi", end=True))
        await c.wait_stream(sid)
        if ENGINE == "nghttp2":  # nghttp2 refuses any repeat (RFC 9110 8.6 allows either)
            assert c.resets.get(sid) == PROTOCOL_ERROR and srv.requests == []
            return
        assert c.status[sid] == 200
        head = srv.requests[0].lower()
        assert head.count(b"content-length:") == 1 and b"content-length: 2\r\n" in head
        assert b"transfer-encoding" not in head


async def test_options_star_and_ipv6_authority_are_accepted() -> None:
    async with setup() as (srv, p):
        c = await RawH2.connect(p.port())
        sid = c.headers(request("OPTIONS", "*", authority="[::1]:8080"))
        await c.wait_stream(sid)
        assert c.status[sid] == 200
        assert srv.requests[0].startswith(b"OPTIONS * HTTP/1.1\r\nhost: [::1]:8080\r\n")


@pytest.mark.parametrize("fields", CONNECTION_ERRORS.values(), ids=CONNECTION_ERRORS.keys())
async def test_what_h2_refuses_is_a_connection_error_and_never_reaches_the_origin(
        fields: list[tuple[bytes, bytes]]) -> None:
    async with setup() as (srv, p):
        c = await RawH2.connect(p.port())
        c.headers(fields, end=False)
        await c.wait_closed()
        assert c.goaway_code == PROTOCOL_ERROR
        assert calm_count(p, "h2_protocol_error") == 1
        assert srv.connections == 0 and srv.requests == []
        await fresh_client_is_served(srv, p)


# -- HPACK bomb -------------------------------------------------------------------------------

async def test_an_hpack_bomb_is_cut_off_before_it_is_decoded_and_the_listener_serves_on() -> None:
    # One 4 KB field in the dynamic table, then a block of one-byte references to it: 10 KB on
    # the wire that would decode to 39 MB.  Counted as decoded, it stops at twice the head
    # limit (64 KiB by default): GOAWAY, nothing reaches the origin, others are served.
    async with setup() as (srv, p):
        c = await RawH2.connect(p.port())
        # 3,900 bytes: with :authority and :path the table holds all three (4,034 of 4,096).
        sid = c.headers(request("GET", "/seed", extra=[(b"x-bomb", b"b" * 3900)]))
        await c.wait_stream(sid)
        assert c.status.get(sid) == 200
        # The same pseudo-headers again (all indexed already), so x-bomb stays entry 62.
        bomb = c.encoder.encode(request("GET", "/seed")) + b"\xbe" * 10_000
        c.write(h2raw.frame(h2raw.HEADERS, h2raw.END_HEADERS | h2raw.END_STREAM, c.next_sid,
                            bomb))
        await c.wait_closed()
        assert c.goaway_code is not None and c.goaway_code != 0
        assert calm_count(p, "header_too_large") == 1
        assert [h.split(b"\r\n")[0] for h in srv.requests] == [b"GET /seed HTTP/1.1"]
        await fresh_client_is_served(srv, p)
