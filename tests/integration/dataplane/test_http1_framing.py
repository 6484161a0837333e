"""Framing is the proxy's own: `Connection` cannot talk it out of Content-Length.

The attack (issue 6, item 1): `Connection: content-length` made the proxy drop Content-Length as
a hop-by-hop field and still forward the body, unframed, so the origin read the body as a second
request the proxy never saw; when that hidden request was slow its answer went to the next
client of the pooled upstream connection.  The same nomination in a response left the client
with an unframed keep-alive response.  Each shape here runs against an origin that records every
byte and frames requests with its own strict parser.
"""

from __future__ import annotations

import asyncio

from tests.support.proxy import RunningProxy, running_proxy, simple_config
from tests.support.rawservers import connect
from tests.support.rawservers import read_response_within as read_response
from tests.support.recorder import Seen, ok, recording_origin

HIDDEN = b"GET /hidden HTTP/1.1\r\nHost: a\r\n\r\n"
SMUGGLE = (b"POST /a HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\n"
           b"Content-Length: %d\r\n\r\n%b" % (len(HIDDEN), HIDDEN))


async def get(p: RunningProxy, path: bytes) -> tuple[int, bytes]:
    r, w = await connect(p.port())
    w.write(b"GET %b HTTP/1.1\r\nHost: a\r\n\r\n" % path)
    resp = await read_response(r)
    w.close()
    return resp.status, resp.body


async def test_connection_content_length_request_reaches_the_origin_as_one_framed_request(
) -> None:
    async with recording_origin() as origin, \
            running_proxy(simple_config(origin.port)) as p:
        r, w = await connect(p.port())
        w.write(SMUGGLE)
        resp = await read_response(r)
        assert (resp.status, resp.body) == (200, b"/a")
        # The listener still serves, over the same (pooled) upstream connection.
        assert await get(p, b"/after") == (200, b"/after")
        w.close()
        assert origin.errors == []
        assert [(s.method, s.target, s.body) for s in origin.requests] == [
            (b"POST", b"/a", HIDDEN), (b"GET", b"/after", b"")]
        assert origin.connections == 1
        # Exactly one Content-Length, the proxy's own, and the body right after the head.
        first = bytes(origin.raw[0])
        head, _, rest = first.partition(b"\r\n\r\n")
        assert head.lower().count(b"content-length: %d" % len(HIDDEN)) == 1
        assert b"transfer-encoding" not in head.lower()
        assert rest.startswith(HIDDEN + b"GET /after ")
        assert p.metric("tulle_proxy_requests_total", cluster="backend") == 2


async def test_a_slow_hidden_response_never_reaches_another_client() -> None:
    async def respond(req: Seen) -> bytes:
        if req.target == b"/hidden":
            await asyncio.sleep(0.3)  # slow: with unframed bodies, it answered the next client
            return ok(b"POISON")
        return ok(req.target)

    async with recording_origin(respond) as origin, \
            running_proxy(simple_config(origin.port)) as p:
        r, w = await connect(p.port())
        w.write(SMUGGLE)
        assert (await read_response(r)).body == b"/a"
        w.close()
        for i in range(3):  # other clients, reusing the pooled upstream connection
            path = b"/victim%d" % i
            assert await get(p, path) == (200, path)
        assert [s.target for s in origin.requests] == [b"/a", b"/victim0", b"/victim1",
                                                        b"/victim2"]
        assert origin.connections == 1


async def test_connection_content_length_response_is_framed_for_the_client() -> None:
    async def respond(req: Seen) -> bytes:
        if req.target == b"/nominated":
            return (b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n"
                    b"\r\nhello")
        return ok(req.target)

    async with recording_origin(respond) as origin, \
            running_proxy(simple_config(origin.port)) as p:
        r, w = await connect(p.port())
        w.write(b"GET /nominated HTTP/1.1\r\nHost: a\r\n\r\n")
        first = await read_response(r)
        assert (first.status, first.header(b"content-length"), first.body) == (
            200, b"5", b"hello")
        assert not first.has(b"transfer-encoding")
        # The next request on this client connection, and another client on the pooled
        # upstream connection, get their own answers.
        w.write(b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(r)).body == b"/second"
        w.close()
        assert await get(p, b"/third") == (200, b"/third")
        assert [s.target for s in origin.requests] == [b"/nominated", b"/second", b"/third"]
        assert origin.connections == 1
        assert p.metric("tulle_proxy_requests_total", response_code="200") == 3


async def test_connection_naming_host_or_transfer_encoding_is_ignored() -> None:
    async with recording_origin() as origin, \
            running_proxy(simple_config(origin.port)) as p:
        r, w = await connect(p.port())
        w.write(b"POST /c HTTP/1.1\r\nHost: a\r\nConnection: host, transfer-encoding, x-drop\r\n"
                b"X-Drop: 1\r\nX-Keep: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\n\r\n")
        assert (await read_response(r)).body == b"/c"
        w.close()
        (seen,) = origin.requests
        assert seen.body == b"abc"
        assert seen.header(b"host") == b"a"
        assert seen.header(b"x-drop") is None  # an ordinary nominated field is still removed
        assert seen.header(b"x-keep") == b"2"
        assert seen.header(b"transfer-encoding") == b"chunked"
