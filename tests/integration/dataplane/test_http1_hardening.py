"""HTTP/1 hardening through a real proxy (issue 6, items 7 and 9, HTTP/1 parts): HTTP/1.0 with
Transfer-Encoding, forbidden trailer fields, h2c upgrades, and the header-count, chunk-extension
and trailer limits, each way.

Each case asserts what the origin (recording every byte) received, what the client got, the
metric that counted it, and that the listener still serves afterwards.
"""

from __future__ import annotations

from typing import Any

import pytest
from tests.support.proxy import RunningProxy, running_proxy, simple_config
from tests.support.rawservers import connect, cut_off
from tests.support.rawservers import read_response_within as read_response
from tests.support.recorder import RecordingOrigin, Seen, ok, recording_origin

SETTINGS = {"max_header_count": 20, "max_chunk_extension_bytes": 64, "max_trailer_bytes": 256}


async def still_serves(p: RunningProxy, origin: RecordingOrigin) -> None:
    r, w = await connect(p.port())
    w.write(b"GET /still HTTP/1.1\r\nHost: a\r\n\r\n")
    resp = await read_response(r)
    w.close()
    assert (resp.status, resp.body) == (200, b"/still")
    assert origin.requests[-1].target == b"/still"


def config(origin: RecordingOrigin, **settings: Any) -> dict[str, Any]:
    return simple_config(origin.port, settings={**SETTINGS, **settings})


async def refused(p: RunningProxy, wire: bytes) -> tuple[int, bool]:
    r, w = await connect(p.port())
    w.write(wire)
    resp = await read_response(r)
    closed = await cut_off(r)
    w.close()
    return resp.status, closed


# -- requests refused before any upstream ---------------------------------------------------

HEAD_FIELDS = b"".join(b"X-%d: v\r\n" % i for i in range(20))  # + Host: 21 > 20


@pytest.mark.parametrize(("wire", "status", "kind"), [
    pytest.param(b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"0\r\n\r\n", 400, "malformed_request", id="http10_with_te"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n" + HEAD_FIELDS + b"\r\n", 431,
                 "header_too_large", id="too_many_fields"),
    pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: h2c\r\n"
                 b"Content-Length: 2\r\n\r\nhi", 400, "malformed_request", id="h2c_with_body"),
])
async def test_refused_before_any_upstream(wire: bytes, status: int, kind: str) -> None:
    async with recording_origin() as origin, running_proxy(config(origin)) as p:
        assert await refused(p, wire) == (status, True)
        assert p.metric("tulle_proxy_protocol_errors_total", kind=kind) == 1
        assert origin.connections == 0 and origin.requests == []
        await still_serves(p, origin)


@pytest.mark.parametrize(("body", "status", "kind"), [
    pytest.param(b"1;ext=" + b"v" * 2000 + b"\r\nx\r\n0\r\n\r\n", 400, "malformed_request",
                 id="chunk_extension"),
    pytest.param(b"1\r\nx\r\n0\r\nx-t: " + b"t" * 400 + b"\r\n\r\n", 431, "header_too_large",
                 id="trailer_section"),
])
async def test_request_body_framing_limits(body: bytes, status: int, kind: str) -> None:
    async with recording_origin() as origin, running_proxy(config(origin)) as p:
        r, w = await connect(p.port())
        w.write(b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        await origin.wait_for(lambda: origin.connections == 1)  # the head went upstream
        w.write(body)
        resp = await read_response(r)
        assert resp.status == status
        assert await cut_off(r)
        w.close()
        # The upstream stream was reset: the origin never got a complete request.
        await origin.wait_for(lambda: origin.closed[0])
        assert origin.requests == []
        assert p.metric("tulle_proxy_protocol_errors_total", kind=kind) == 1
        assert p.metric("tulle_proxy_requests_total", response_flags="DPE") == 1
        await still_serves(p, origin)


# -- what is forwarded ------------------------------------------------------------------------

async def test_forbidden_request_trailers_never_reach_the_origin() -> None:
    async with recording_origin() as origin, running_proxy(config(origin)) as p:
        r, w = await connect(p.port())
        w.write(b"POST /t HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\nHost: evil\r\nAuthorization: Bearer x\r\nCookie: c=1\r\n"
                b"Trailer: x-ok\r\nX-Ok: 1\r\n\r\n")
        assert (await read_response(r)).body == b"/t"
        w.close()
        (seen,) = origin.requests
        assert seen.body == b"abc"
        raw = bytes(origin.raw[0]).lower()
        assert raw.endswith(b"\r\n0\r\nx-ok: 1\r\n\r\n")
        assert b"evil" not in raw and b"bearer" not in raw and b"c=1" not in raw


async def test_forbidden_response_trailers_never_reach_the_client() -> None:
    async def respond(req: Seen) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
                b"Set-Cookie: s=1\r\nContent-Type: evil\r\nWWW-Authenticate: x\r\nX-Ok: 1\r\n\r\n")

    async with recording_origin(respond) as origin, running_proxy(config(origin)) as p:
        r, w = await connect(p.port())
        w.write(b"GET /t HTTP/1.1\r\nHost: a\r\n\r\n")
        resp = await read_response(r)
        w.close()
        assert (resp.body, resp.trailers) == (b"abc", [(b"x-ok", b"1")])


async def test_h2c_upgrade_is_stripped_and_the_connection_goes_on_as_http11() -> None:
    async with recording_origin() as origin, running_proxy(config(origin)) as p:
        r, w = await connect(p.port())
        w.write(b"GET /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
                b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
        first = await read_response(r)
        second = await read_response(r)
        w.close()
        assert (first.status, first.body, second.body) == (200, b"/h2c", b"/next")
        assert [s.target for s in origin.requests] == [b"/h2c", b"/next"]
        raw = bytes(origin.raw[0]).lower()
        assert b"upgrade" not in raw and b"http2-settings" not in raw and b"h2c\r" not in raw


# -- an upstream over the limits -------------------------------------------------------------

async def test_upstream_with_too_many_header_fields_is_502() -> None:
    async def respond(req: Seen) -> bytes:
        fields = b"".join(b"x-%d: v\r\n" % i for i in range(30))
        return b"HTTP/1.1 200 OK\r\n" + fields + b"content-length: 2\r\n\r\nok"

    async with recording_origin(respond) as origin, running_proxy(config(origin)) as p:
        r, w = await connect(p.port())
        w.write(b"GET /many HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(r)).status == 502
        w.close()
        assert p.metric("tulle_proxy_requests_total", response_code="502",
                        response_flags="UPE") == 1


@pytest.mark.parametrize("tail", [
    pytest.param(b"1;" + b"e" * 2000 + b"\r\nx\r\n0\r\n\r\n", id="chunk_extension"),
    pytest.param(b"1\r\nx\r\n0\r\nx-t: " + b"t" * 400 + b"\r\n\r\n", id="trailer_section"),
])
async def test_upstream_over_a_body_framing_limit_is_cut_off(tail: bytes) -> None:
    async def respond(req: Seen) -> bytes:
        if req.target == b"/still":
            return ok(b"/still")
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + tail

    async with recording_origin(respond) as origin, running_proxy(config(origin)) as p:
        r, w = await connect(p.port())
        w.write(b"GET /bad HTTP/1.1\r\nHost: a\r\n\r\n")
        assert await cut_off(r)  # the head went out (200) and the body is aborted
        w.close()
        assert p.metric("tulle_proxy_requests_total", response_flags="UPE") == 1
        await still_serves(p, origin)
        assert origin.connections == 2  # the bad connection was not reused
