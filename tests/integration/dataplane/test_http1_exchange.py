"""HTTP/1.1 through the proxy, read at the byte level: keep-alive, pipelining, bodies and their
framing, HEAD/204/304, close-delimited upstreams, trailers, HTTP/1.0, absolute-form targets,
100-continue, and the headers a proxy must drop or add."""

from __future__ import annotations

import hashlib
import json

from tests.support.proxy import running_proxy, simple_config
from tests.support.rawservers import (
    chunked_with_trailers,
    close_delimited,
    closed_by_peer,
    connect,
    echo_chunked_raw,
    head_with_length,
    raw_server,
    read_response,
)


def get(path: str, *extra: str, host: str = "a.example") -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", *extra, "", ""]
    return "\r\n".join(lines).encode()


async def test_keep_alive_reuses_both_connections(origin: int) -> None:
    async with running_proxy(simple_config(origin)) as p:
        r, w = await connect(p.port())
        for i in range(3):
            w.write(get(f"/echo/{i}"))
            resp = await read_response(r)
            assert resp.status == 200
            assert json.loads(resp.body)["path"] == f"/echo/{i}"
        w.close()
        assert p.metric("tulle_proxy_downstream_connections_total") == 1
        assert p.metric("tulle_proxy_upstream_connections_total") == 1
        assert p.metric("tulle_proxy_requests_total", response_code="200") == 3


async def test_pipelined_requests_answered_in_order(origin: int) -> None:
    async with running_proxy(simple_config(origin)) as p:
        r, w = await connect(p.port())
        # Slow first, fast after: order must follow the requests, not the upstream's speed.
        w.write(get("/delay/100") + get("/echo/second") + get("/status/404") + get("/echo/4"))
        first = await read_response(r)
        second = await read_response(r)
        third = await read_response(r)
        fourth = await read_response(r)
        assert (first.status, first.body) == (200, b"late\n")
        assert json.loads(second.body)["path"] == "/echo/second"
        assert third.status == 404
        assert json.loads(fourth.body)["path"] == "/echo/4"
        w.close()


async def test_pipelined_requests_with_bodies(origin: int) -> None:
    bodies = [b"a" * 10, b"b" * 100_000, b"", b"c" * 7]
    wire = b""
    for b in bodies:
        wire += b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b" % (len(b), b)
    wire += (b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    async with running_proxy(simple_config(origin)) as p:
        r, w = await connect(p.port())
        w.write(wire)
        for b in [*bodies, b"abcde"]:
            resp = await read_response(r)
            assert resp.status == 200
            got = json.loads(resp.body)
            assert got == {"len": len(b), "sha256": hashlib.sha256(b).hexdigest()}
        w.close()


async def test_many_pipelined_local_answers_do_not_recurse(origin: int) -> None:
    cfg = simple_config(origin)
    cfg["route_tables"][0]["virtual_hosts"][0]["domains"] = ["only.example"]
    async with running_proxy(cfg) as p:
        r, w = await connect(p.port())
        # The first request is slow so the other 3000 queue up, then all answer locally.
        w.write(get("/delay/50", host="only.example") + get("/nope") * 3000)
        assert (await read_response(r)).status == 200
        for _ in range(3000):
            assert (await read_response(r)).status == 404
        w.close()


async def test_chunked_upload_and_chunked_download(origin: int) -> None:
    async with running_proxy(simple_config(origin)) as p:
        r, w = await connect(p.port())
        w.write(b"POST /sink HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b"x" * 70_000, b"y" * 5, b"z" * 300_000):
            w.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            await w.drain()
        w.write(b"0\r\n\r\n")
        resp = await read_response(r)
        assert json.loads(resp.body)["len"] == 370_005
        w.write(get("/chunked"))
        resp = await read_response(r)
        assert resp.header(b"transfer-encoding") == b"chunked"
        assert resp.body == b"one,two,three"
        w.close()


async def test_head_with_content_length_waits_for_no_body() -> None:
    async with raw_server(head_with_length) as srv, running_proxy(simple_config(srv.port)) as p:
        r, w = await connect(p.port())
        w.write(b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
        resp = await read_response(r, head_request=True)
        assert resp.status == 200 and resp.header(b"content-length") == b"12345"
        assert not resp.has(b"transfer-encoding")
        # The same client and upstream connections carry on with a GET.
        w.write(get("/y"))
        resp = await read_response(r)
        assert resp.body == b"get"
        assert srv.connections == 1
        w.close()


async def test_204_and_304_have_no_body(origin: int) -> None:
    async with running_proxy(simple_config(origin)) as p:
        r, w = await connect(p.port())
        for code in (204, 304):
            w.write(get(f"/status/{code}"))
            resp = await read_response(r)
            assert resp.status == code
            assert not resp.has(b"transfer-encoding")
        w.write(get("/echo"))
        assert (await read_response(r)).status == 200
        w.close()


async def test_close_delimited_upstream_is_rechunked_for_http11() -> None:
    async with raw_server(close_delimited) as srv, running_proxy(simple_config(srv.port)) as p:
        r, w = await connect(p.port())
        w.write(get("/"))
        resp = await read_response(r)
        assert resp.header(b"transfer-encoding") == b"chunked"
        assert resp.body == b"until-the-close"
        # The client connection stays usable even though the upstream one closed.
        w.write(get("/again"))
        resp = await read_response(r)
        assert resp.body == b"until-the-close"
        w.close()
        assert p.metric("tulle_proxy_requests_total", response_code="200") == 2


async def test_close_delimited_upstream_to_http10_client_is_close_delimited() -> None:
    async with raw_server(close_delimited) as srv, running_proxy(simple_config(srv.port)) as p:
        r, w = await connect(p.port())
        w.write(b"GET / HTTP/1.0\r\n\r\n")
        resp = await read_response(r)
        assert not resp.has(b"transfer-encoding")
        assert resp.body == b"until-the-close"  # read to EOF: the proxy closed
        w.close()


async def test_http10_client(origin: int) -> None:
    async with running_proxy(simple_config(origin)) as p:
        r, w = await connect(p.port())
        w.write(b"GET /echo HTTP/1.0\r\n\r\n")
        resp = await read_response(r)
        assert resp.status == 200 and resp.header(b"connection") == b"close"
        assert await closed_by_peer(r)
        # HTTP/1.0 keep-alive is honoured, and said so.
        r, w = await connect(p.port())
        w.write(b"GET /bytes/10 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        resp = await read_response(r)
        assert resp.body == b"x" * 10 and resp.header(b"connection") == b"keep-alive"
        w.write(b"GET /chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        resp = await read_response(r)  # unknown length: close-delimited for 1.0
        assert resp.body == b"one,two,three" and not resp.has(b"transfer-encoding")
        w.close()


async def test_trailers_forwarded_both_ways() -> None:
    async with raw_server(chunked_with_trailers) as srv, \
            running_proxy(simple_config(srv.port)) as p:
        r, w = await connect(p.port())
        w.write(get("/", "TE: trailers"))
        resp = await read_response(r)
        assert resp.body == b"hello world"
        assert (b"x-checksum", b"abc123") in resp.trailers
        w.close()
    async with raw_server(echo_chunked_raw) as srv, running_proxy(simple_config(srv.port)) as p:
        r, w = await connect(p.port())
        w.write(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\nX-Sum: 42\r\n\r\n")
        resp = await read_response(r)
        assert resp.body == b"3\r\nabc\r\n0\r\nx-sum: 42\r\n\r\n"
        w.close()


async def test_absolute_form_target(origin: int) -> None:
    async with running_proxy(simple_config(origin)) as p:
        r, w = await connect(p.port())
        w.write(b"GET http://target.example:8080/echo?q=1 HTTP/1.1\r\nHost: other\r\n\r\n")
        resp = await read_response(r)
        body = json.loads(resp.body)
        assert body["path"] == "/echo?q=1"
        assert body["headers"]["host"] == "target.example:8080"
        w.close()


async def test_hop_by_hop_removed_and_forwarding_headers_set(origin: int) -> None:
    async with running_proxy(simple_config(origin)) as p:
        r, w = await connect(p.port())
        w.write(get("/echo", "Connection: keep-alive, X-Secret", "X-Secret: s", "Keep-Alive: 5",
                    "Proxy-Connection: keep-alive", "TE: trailers", "Upgrade: h2c",
                    "X-Forwarded-For: 10.0.0.1", "X-Forwarded-Proto: https",
                    "X-Request-Id: my-id", "X-Kept: yes"))
        resp = await read_response(r)
        h = json.loads(resp.body)["headers"]
        for gone in ("x-secret", "keep-alive", "proxy-connection", "te", "upgrade",
                     "transfer-encoding"):
            assert gone not in h, gone
        assert h["x-kept"] == "yes"
        assert h["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
        assert h["x-forwarded-proto"] == "https"
        assert h["x-request-id"] == "my-id"
        # A fresh request gets its own id and the proxy's scheme.
        w.write(get("/echo"))
        h = json.loads((await read_response(r)).body)["headers"]
        assert h["x-forwarded-proto"] == "http" and len(h["x-request-id"]) == 36
        w.close()


async def test_expect_100_continue(origin: int) -> None:
    async with running_proxy(simple_config(origin)) as p:
        r, w = await connect(p.port())
        w.write(b"POST /sink HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
                b"Content-Length: 5\r\n\r\n")
        line = await r.readuntil(b"\r\n\r\n")
        assert line == b"HTTP/1.1 100 Continue\r\n\r\n"
        w.write(b"hello")
        resp = await read_response(r)
        assert json.loads(resp.body)["len"] == 5
        w.close()
