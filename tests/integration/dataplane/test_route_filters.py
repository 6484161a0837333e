"""Redirects and mirrors through a real proxy under hostile or broken conditions: a client
that keeps sending a body to a redirect, a mirror that refuses connections, a mirror that never
answers (its copies are bounded and dropped, never queued, and the main requests never wait)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.integration.dataplane.test_http_filters import recording_origin
from tests.support.proxy import free_port, running_proxy
from tests.support.rawservers import RawServer, connect, cut_off, raw_server, read_response_within

from tulle.dataplane.filters.mirror import MAX_IN_FLIGHT


async def silent(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Reads a request head, counts it, never answers (holds the connection)."""
    while True:
        srv.requests.append(await r.readuntil(b"\r\n\r\n"))


def config(origin: int, mirror: int) -> dict[str, Any]:
    return {
        "listeners": [{"name": "out", "port": 0, "protocol": "auto", "route_table": "rt"}],
        "clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1", "port": origin}]},
                     {"name": "m", "endpoints": [{"address": "127.0.0.1", "port": mirror}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
             "backends": [{"cluster": "c"}],
             "filters": [{"type": "RequestRedirect", "status_code": 307,
                          "path": {"type": "ReplacePrefixMatch", "value": "/new"}}]},
            {"backends": [{"cluster": "c"}],
             "filters": [{"type": "RequestMirror", "cluster": "m"}]},
        ]}]}],
    }


async def test_a_redirect_answers_a_client_still_sending_its_body_and_closes() -> None:
    async with raw_server(recording_origin) as o, running_proxy(config(o.port, free_port())) as p:
        r, w = await connect(p.port())
        w.write(b"POST /old/x?a=1 HTTP/1.1\r\nhost: svc:8080\r\ntransfer-encoding: chunked\r\n"
                b"\r\n10\r\n0123456789abcdef\r\n")  # ... and the rest never comes
        resp = await read_response_within(r)
        assert resp.status == 307 and resp.header(b"location") == b"http://svc:8080/new/x?a=1"
        assert resp.body == b""
        assert await cut_off(r)  # the unread body makes the connection unusable: closed
        w.close()
        assert o.requests == []


async def test_a_mirror_that_refuses_connections_never_touches_the_request() -> None:
    async with raw_server(recording_origin) as o, running_proxy(config(o.port, free_port())) as p:
        r, w = await connect(p.port())
        for i in range(3):
            w.write(b"GET /a%d HTTP/1.1\r\nhost: svc\r\n\r\n" % i)
            resp = await read_response_within(r)
            assert resp.status == 200 and resp.body == b"ok"
        w.close()
        for _ in range(200):  # the copies fail on their own time, after the answers
            if p.metric("tulle_proxy_mirror_requests_total", outcome="failed") == 3:
                break
            await asyncio.sleep(0.01)
        assert p.metric("tulle_proxy_mirror_requests_total", cluster="m", outcome="sent") == 3
        assert p.metric("tulle_proxy_mirror_requests_total", outcome="failed") == 3
        assert len(o.requests) == 3


async def test_a_mirror_that_never_answers_is_bounded_not_queued() -> None:
    async with raw_server(recording_origin) as o, raw_server(silent) as m, \
            running_proxy(config(o.port, m.port)) as p:
        r, w = await connect(p.port())
        n = MAX_IN_FLIGHT + 12
        for i in range(n):
            w.write(b"GET /r%d HTTP/1.1\r\nhost: svc\r\n\r\n" % i)
            resp = await read_response_within(r)
            assert resp.status == 200, i  # every main request answered while copies hang
        w.close()
        assert p.metric("tulle_proxy_mirror_requests_total", outcome="sent") == MAX_IN_FLIGHT
        assert p.metric("tulle_proxy_mirror_requests_total", outcome="dropped") == 12
        assert len(o.requests) == n
        for _ in range(300):  # the copies did go out (each holds a connection to the mirror)
            if len(m.requests) == MAX_IN_FLIGHT:
                break
            await asyncio.sleep(0.01)
        assert len(m.requests) == MAX_IN_FLIGHT
        assert all(b"host: svc-shadow" in h.lower() for h in m.requests)
