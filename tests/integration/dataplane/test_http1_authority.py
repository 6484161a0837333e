"""Found by an outside review of the HTTP/1 hardening: what a client can put in the authority
of a request (Host, an absolute-form target) and in an upgrade request's body.

* `GET http://svc?/public/../admin` was routed and forwarded with the authority `svc?`; a Host
  of `a/b?c`, `u@a` or `a b` went upstream as is.  Both must be host[:port], as `:authority`
  must on HTTP/2 (`protocols/h2fields.authority_ok`).
* An upgrade request with a body (`Content-Length: 20` + `Upgrade: websocket`) went upstream
  with its `content-length` but without its body (llhttp hands the bytes after an upgrade
  head to the tunnel); on a non-101 answer the connection went back to the pool, and the next
  client's request was, to the origin, the rest of that body: request smuggling past routing.

Each case asserts what the origin received, what the client got, the metric, and that the
listener still serves afterwards.
"""

from __future__ import annotations

import asyncio

import pytest
from tests.support.proxy import RunningProxy, running_proxy, simple_config
from tests.support.rawservers import RawResponse, connect
from tests.support.rawservers import read_response as _read_response
from tests.support.recorder import RecordingOrigin, recording_origin


async def read_response(r: asyncio.StreamReader) -> RawResponse:
    return await asyncio.wait_for(_read_response(r), 3.0)


async def still_serves(p: RunningProxy, origin: RecordingOrigin) -> None:
    r, w = await connect(p.port())
    w.write(b"GET /still HTTP/1.1\r\nHost: a\r\n\r\n")
    resp = await read_response(r)
    w.close()
    assert (resp.status, resp.body) == (200, b"/still")
    assert origin.requests[-1].target == b"/still"


@pytest.mark.parametrize("wire", [
    pytest.param(b"GET http://user@svc/admin HTTP/1.1\r\nHost: a\r\n\r\n", id="abs_userinfo"),
    pytest.param(b"GET http://svc:8x/admin HTTP/1.1\r\nHost: a\r\n\r\n", id="abs_bad_port"),
    pytest.param(b"GET /x HTTP/1.1\r\nHost: a/b?c\r\n\r\n", id="host_path"),
    pytest.param(b"GET /x HTTP/1.1\r\nHost: u@a\r\n\r\n", id="host_userinfo"),
    pytest.param(b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n", id="host_space"),
    pytest.param(b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", id="asterisk_not_options"),
])
async def test_invalid_authority_never_reaches_the_origin(wire: bytes) -> None:
    async with recording_origin() as origin, running_proxy(simple_config(origin.port)) as p:
        r, w = await connect(p.port())
        w.write(wire)
        resp = await read_response(r)
        w.close()
        assert resp.status == 400
        assert origin.connections == 0 and origin.requests == []
        assert p.metric("tulle_proxy_protocol_errors_total", kind="malformed_request") == 1
        await still_serves(p, origin)


async def test_absolute_form_authority_ends_at_the_query() -> None:
    async with recording_origin() as origin, running_proxy(simple_config(origin.port)) as p:
        r, w = await connect(p.port())
        w.write(b"GET http://svc?/public/../admin HTTP/1.1\r\nHost: a\r\n\r\n")
        resp = await read_response(r)
        w.close()
        (seen,) = origin.requests
        assert (seen.target, seen.header(b"host")) == (b"/?/public/../admin", b"svc")
        assert resp.body == b"/?/public/../admin"


@pytest.mark.parametrize("framing", [
    pytest.param(b"Content-Length: 20\r\n\r\n01234567890123456789", id="content_length"),
    pytest.param(b"Transfer-Encoding: chunked\r\n\r\n14\r\n01234567890123456789\r\n0\r\n\r\n",
                 id="chunked"),
])
async def test_upgrade_request_with_a_body_is_refused_and_cannot_poison_the_pool(
        framing: bytes) -> None:
    # An origin that answers every head at once, keep-alive, without reading a body first.
    raw: list[bytearray] = []

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        raw.append(bytearray())
        mine = raw[-1]
        buf = b""
        while data := await r.read(65536):
            mine += data
            buf += data
            while b"\r\n\r\n" in buf:
                _, _, buf = buf.partition(b"\r\n\r\n")
                w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        w.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_proxy(simple_config(port)) as p:
            r, w = await connect(p.port())
            w.write(b"POST /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n"
                    b"Upgrade: websocket\r\n" + framing)
            assert (await read_response(r)).status == 400
            w.close()
            assert raw == []  # refused before any upstream
            assert p.metric("tulle_proxy_protocol_errors_total", kind="malformed_request") == 1
            r, w = await connect(p.port())
            w.write(b"GET /victim HTTP/1.1\r\nHost: a\r\n\r\n")
            resp = await read_response(r)
            w.close()
            assert (resp.status, resp.body) == (200, b"ok")
            assert len(raw) == 1 and bytes(raw[0]).startswith(b"GET /victim HTTP/1.1\r\n")
    finally:
        server.close()
