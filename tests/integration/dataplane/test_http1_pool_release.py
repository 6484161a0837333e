"""An upstream HTTP/1 connection goes back to the pool only after a complete, well-framed exchange.

After a reset, a timeout or an error mid-exchange the connection's state is unknown (the origin
may still be writing the old response, or reading the old body): reusing it would hand that to
the next request.  Each case: the origin (recording every byte) sees the proxy close the
connection, and the next request arrives on a fresh connection and gets its own answer.
"""

from __future__ import annotations

from typing import Any

from tests.support.proxy import RunningProxy, running_proxy, simple_config
from tests.support.rawservers import connect, cut_off, rst
from tests.support.rawservers import read_response_within as read_response
from tests.support.recorder import RecordingOrigin, Seen, ok, recording_origin


async def respond(req: Seen) -> bytes | None:
    if req.target == b"/partial":  # a head and part of the body, then silence
        return b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789"
    if req.target == b"/stall":
        return None
    if req.target == b"/bad-chunk":
        return b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\n"
    if req.target == b"/early":  # answers before the request body has arrived
        return ok(b"early")
    return ok(req.target)


def config(origin: RecordingOrigin, timeout_ms: int = 0) -> dict[str, Any]:
    cfg = simple_config(origin.port)
    if timeout_ms:
        cfg["route_tables"][0]["virtual_hosts"][0]["rules"][0]["timeout_ms"] = timeout_ms
    return cfg


async def next_request_uses_a_fresh_connection(p: RunningProxy, origin: RecordingOrigin) -> None:
    await origin.wait_for(lambda: origin.closed[0])  # the proxy closed the used connection
    r, w = await connect(p.port())
    w.write(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n")
    resp = await read_response(r)
    w.close()
    assert (resp.status, resp.body) == (200, b"/next")
    assert origin.connections == 2
    assert [s.target for s in origin.on_conn(1)] == [b"/next"]
    assert origin.errors == []


async def test_complete_exchange_is_reused() -> None:
    async with recording_origin(respond) as origin, \
            running_proxy(config(origin)) as p:
        for path in (b"/one", b"/two"):
            r, w = await connect(p.port())
            w.write(b"GET %b HTTP/1.1\r\nHost: a\r\n\r\n" % path)
            assert (await read_response(r)).body == path
            w.close()
        assert origin.connections == 1
        assert not origin.closed[0]


async def test_client_gone_mid_response_closes_the_upstream_connection() -> None:
    async with recording_origin(respond) as origin, \
            running_proxy(config(origin)) as p:
        r, w = await connect(p.port())
        w.write(b"GET /partial HTTP/1.1\r\nHost: a\r\n\r\n")
        await r.readuntil(b"\r\n\r\n")  # the head arrived; the body never completes
        rst(w)  # a reset: a FIN would be a half-close, still owed the rest of the response
        await next_request_uses_a_fresh_connection(p, origin)
        assert p.metric("tulle_proxy_requests_total", response_flags="DC") == 1


async def test_timeout_mid_response_closes_the_upstream_connection() -> None:
    async with recording_origin(respond) as origin, \
            running_proxy(config(origin, timeout_ms=200)) as p:
        r, w = await connect(p.port())
        w.write(b"GET /partial HTTP/1.1\r\nHost: a\r\n\r\n")
        await r.readuntil(b"\r\n\r\n")
        assert await cut_off(r)  # cut off: an abort, not EOF+OK
        w.close()
        await next_request_uses_a_fresh_connection(p, origin)
        assert p.metric("tulle_proxy_requests_total", response_flags="UT") == 1


async def test_timeout_before_the_head_closes_the_upstream_connection() -> None:
    async with recording_origin(respond) as origin, \
            running_proxy(config(origin, timeout_ms=200)) as p:
        r, w = await connect(p.port())
        w.write(b"GET /stall HTTP/1.1\r\nHost: a\r\n\r\n")
        assert (await read_response(r)).status == 504
        w.close()
        await next_request_uses_a_fresh_connection(p, origin)
        assert p.metric("tulle_proxy_requests_total", response_code="504",
                        response_flags="UT") == 1


async def test_protocol_error_mid_body_closes_the_upstream_connection() -> None:
    async with recording_origin(respond) as origin, \
            running_proxy(config(origin)) as p:
        r, w = await connect(p.port())
        w.write(b"GET /bad-chunk HTTP/1.1\r\nHost: a\r\n\r\n")
        await r.readuntil(b"\r\n\r\n")
        assert await cut_off(r)
        w.close()
        await next_request_uses_a_fresh_connection(p, origin)
        assert p.metric("tulle_proxy_requests_total", response_flags="UPE") == 1


async def test_response_before_the_request_body_ended_closes_the_upstream_connection() -> None:
    async with recording_origin(respond, early={b"/early"}) as origin, \
            running_proxy(config(origin)) as p:
        r, w = await connect(p.port())
        w.write(b"POST /early HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
        resp = await read_response(r)
        assert (resp.status, resp.body) == (200, b"early")
        assert await cut_off(r)  # we will not read the rest
        w.close()
        await next_request_uses_a_fresh_connection(p, origin)
