"""The stream idle timeout through a real proxy: a silent upstream is 504 `SI`, a client that
stops sending its body 408 `SI`, and a slow but steady response is never cut."""

from __future__ import annotations

from typing import Any

from tests.support.flaky import flaky_origin
from tests.support.proxy import running_proxy, simple_config
from tests.support.rawservers import connect, read_response_within


def idle_config(port: int, ms: int = 200) -> dict[str, Any]:
    cfg = simple_config(port)
    cfg["route_tables"][0]["virtual_hosts"][0]["rules"][0]["stream_idle_timeout_ms"] = ms
    return cfg


async def test_a_silent_upstream_is_504_si_and_the_listener_keeps_serving() -> None:
    async with flaky_origin(["hang"]) as o, running_proxy(idle_config(o.port)) as p:
        r, w = await connect(p.port())
        w.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        resp = await read_response_within(r, 2.0)
        assert resp.status == 504 and b"idle" in resp.body
        assert p.metric("tulle_proxy_requests_total", response_flags="SI") == 1
        w.close()
        r, w = await connect(p.port())
        w.write(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert (await read_response_within(r, 2.0)).status == 200
        w.close()


async def test_a_client_that_stops_sending_its_body_gets_408() -> None:
    async with flaky_origin() as o, running_proxy(idle_config(o.port)) as p:
        r, w = await connect(p.port())
        w.write(b"PUT /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123")
        resp = await read_response_within(r, 2.0)
        assert resp.status == 408
        assert p.metric("tulle_proxy_requests_total", response_code="408",
                        response_flags="SI") == 1
        w.close()


async def test_a_slow_but_steady_response_outlives_the_idle_timeout() -> None:
    async with flaky_origin(["drip"]) as o, running_proxy(idle_config(o.port, 150)) as p:
        r, w = await connect(p.port())
        w.write(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        resp = await read_response_within(r, 3.0)  # ~480 ms in all, 60 ms between chunks
        assert (resp.status, resp.body) == (200, b"........")
        assert p.metric("tulle_proxy_requests_total", response_flags="SI") == 0
        w.close()
