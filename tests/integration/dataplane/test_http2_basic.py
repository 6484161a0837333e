"""HTTP/2 through one proxy: h2c prior knowledge downstream, h2c and HTTP/1 upstreams, and the
translation both ways."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import h2.config
import h2.connection
import h2.events
from tests.support.h2peers import H2Client, running_h2_origin
from tests.support.proxy import free_port, running_proxy, simple_config


async def _run(*argv: str) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out, err


def h2_config(upstream_port: int, cluster_protocol: str = "http2", **kw: Any) -> dict[str, Any]:
    return simple_config(upstream_port, protocol="http2", cluster_protocol=cluster_protocol, **kw)


async def test_curl_prior_knowledge_reaches_the_http1_origin(origin: int) -> None:
    async with running_proxy(h2_config(origin, "http1")) as p:
        rc, out, err = await _run("curl", "-sS", "--http2-prior-knowledge", "-m", "20",
                                  "-H", "te: trailers", "-H", "cookie: a=1", "-H", "cookie: b=2",
                                  p.url(path="/echo?x=1"))
        assert rc == 0, err
        body = json.loads(out)
        assert body["path"] == "/echo?x=1"
        assert body["version"] == "1.1"
        assert body["headers"]["host"] == f"127.0.0.1:{p.port()}"  # :authority became Host
        assert body["headers"]["cookie"] == "a=1; b=2"  # split cookies joined for HTTP/1
        assert body["headers"]["x-forwarded-for"] == "127.0.0.1"
        assert body["headers"]["x-forwarded-proto"] == "http"
        assert p.metric("tulle_proxy_requests_total", response_code="200") == 1


async def test_h2_client_to_h2c_upstream_keeps_authority_and_strips_hop_by_hop() -> None:
    async with running_h2_origin() as (port, origin), running_proxy(h2_config(port)) as p:
        c = await H2Client.connect(p.port())
        r = await c.request("GET", "/echo", headers=[(b"te", b"trailers"),
                                                     (b"x-custom", b"1")])
        assert r.status == 200
        body = r.json()
        assert body["authority"] == "example.test"
        assert body["headers"]["te"] == "trailers"
        assert body["headers"]["x-custom"] == "1"
        assert body["headers"]["x-forwarded-for"] == "127.0.0.1"
        assert "host" not in body["headers"]
        # A POST with a body on the same connection: multiplexed streams, one upstream conn.
        r2 = await c.request("POST", "/sink", body=b"abc" * 1000)
        assert r2.status == 200 and r2.json()["len"] == 3000
        assert origin.connections == 1
        c.close()


async def test_http1_client_to_h2_upstream_host_becomes_authority() -> None:
    async with running_h2_origin() as (port, _), \
            running_proxy(simple_config(port, cluster_protocol="http2")) as p, \
            aiohttp.ClientSession() as s:
        async with s.post(p.url(path="/echo"), data=b"x" * 10_000,
                          headers={"Host": "svc.example:8080"}) as r:
            assert r.status == 200
            body = await r.json()
        assert body["authority"] == "svc.example:8080"
        assert body["method"] == "POST"
        assert body["body_len"] == 10_000
        async with s.get(p.url(path="/trailers")) as r:
            assert r.status == 200
            assert await r.read() == b"hello trailers"


async def test_many_concurrent_streams_open_more_upstream_connections() -> None:
    async with running_h2_origin() as (port, origin):
        cfg = h2_config(port)
        cfg["clusters"][0]["max_concurrent_streams"] = 10
        async with running_proxy(cfg) as p:
            c = await H2Client.connect(p.port())
            results = await asyncio.gather(*(c.request("GET", f"/echo?i={i}") for i in range(50)))
            assert [r.status for r in results] == [200] * 50
            assert sorted(r.json()["path"] for r in results) == sorted(
                f"/echo?i={i}" for i in range(50))
            assert 2 <= origin.connections <= 5
            c.close()


async def test_trailers_are_forwarded_both_ways() -> None:
    async with running_h2_origin() as (port, _), running_proxy(h2_config(port)) as p:
        c = await H2Client.connect(p.port())
        r = await c.request("GET", "/trailers")
        assert bytes(r.body) == b"hello trailers"
        assert (b"x-checksum", b"abc123") in r.trailers
        assert (b"grpc-status", b"0") in r.trailers
        # Request trailers reach the upstream too (the origin answers only after END_STREAM).
        r2 = await c.request("POST", "/sink", body=b"z" * 100, trailers=[(b"x-sum", b"1")])
        assert r2.status == 200 and r2.json()["len"] == 100
        c.close()


async def test_client_reset_mid_response_resets_the_upstream_stream() -> None:
    async with running_h2_origin() as (port, origin), running_proxy(h2_config(port)) as p:
        c = await H2Client.connect(p.port())
        sid, r = c.start("GET", "/stream/100000")
        await asyncio.wait_for(r.head.wait(), 10)
        assert r.status == 200
        c.reset(sid)
        await asyncio.wait_for(origin.reset_seen.wait(), 10)
        # The connection is still good for other streams.
        r2 = await c.request("GET", "/echo")
        assert r2.status == 200
        assert p.metric("tulle_proxy_requests_total", response_flags="DC") == 1
        c.close()


async def test_upstream_reset_after_head_resets_only_that_stream() -> None:
    async with running_h2_origin() as (port, _), running_proxy(h2_config(port)) as p:
        c = await H2Client.connect(p.port())
        r = await c.request("GET", "/reset")
        assert r.status == 200
        assert r.reset_code == 2  # INTERNAL_ERROR
        r2 = await c.request("GET", "/echo")
        assert r2.status == 200
        c.close()


async def test_upstream_goaway_before_processing_is_retried_on_a_new_connection() -> None:
    async with running_h2_origin() as (port, origin), running_proxy(h2_config(port)) as p:
        origin.goaway_connections = 1
        c = await H2Client.connect(p.port())
        r = await c.request("GET", "/echo")
        assert r.status == 200
        assert origin.connections == 2
        assert origin.requests == 1
        c.close()


async def test_upstream_down_is_503_for_plain_h2_requests() -> None:
    async with running_proxy(h2_config(free_port())) as p:
        c = await H2Client.connect(p.port())
        r = await c.request("GET", "/echo")
        assert r.status == 503
        assert b"cannot connect" in r.body
        assert p.metric("tulle_proxy_requests_total", response_flags="UF") == 1
        c.close()


async def test_oversized_request_head_gets_431_on_its_stream() -> None:
    cfg = h2_config(free_port(), settings={"max_request_header_bytes": 4096})
    async with running_proxy(cfg) as p:
        c = await H2Client.connect(p.port())
        r = await c.request("GET", "/echo", headers=[(b"x-big", b"a" * 5000)])
        assert r.status == 431
        assert p.metric("tulle_proxy_protocol_errors_total", kind="header_too_large") == 1
        c.close()


async def test_bad_bytes_get_goaway_protocol_error_and_are_counted() -> None:
    async with running_proxy(h2_config(free_port())) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port())
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 10)  # the proxy closes after GOAWAY
        writer.close()
        probe = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        probe.initiate_connection()
        events = probe.receive_data(data)
        goaways = [e for e in events if isinstance(e, h2.events.ConnectionTerminated)]
        assert len(goaways) == 1 and goaways[0].error_code == 1  # PROTOCOL_ERROR
        assert p.metric("tulle_proxy_protocol_errors_total", kind="h2_protocol_error") == 1


async def test_drain_sends_goaway_and_lets_the_stream_finish() -> None:
    async with running_h2_origin() as (port, _), running_proxy(h2_config(port)) as p:
        c = await H2Client.connect(p.port())
        sid, r = c.start("GET", "/stream/200")
        await asyncio.wait_for(r.head.wait(), 10)
        clean = await p.server.drain(timeout=20)
        await asyncio.wait_for(r.done.wait(), 10)
        assert clean
        assert r.reset_code is None and len(r.body) == 200 * 16384
        assert c.goaway == 0  # NO_ERROR
        await asyncio.wait_for(c.closed.wait(), 10)


async def test_h2load_through_the_proxy_to_an_h2c_upstream() -> None:
    async with running_h2_origin() as (port, _), running_proxy(h2_config(port)) as p:
        rc, out, err = await _run("h2load", "-n", "300", "-c", "3", "-m", "10",
                                  p.url(path="/echo"))
        assert rc == 0, err
        text = out.decode()
        assert "300 succeeded, 0 failed" in text, text
        assert p.metric("tulle_proxy_requests_total", response_code="200") == 300


async def test_idle_connection_gets_goaway_and_is_closed() -> None:
    cfg = h2_config(free_port(), settings={"header_timeout_ms": 200, "idle_timeout_ms": 200})
    async with running_proxy(cfg) as p:
        c = await H2Client.connect(p.port())
        r = await c.request("GET", "/echo")
        assert r.status == 503  # nothing listens upstream; the connection stays usable
        await asyncio.wait_for(c.closed.wait(), 10)
        assert c.goaway == 0
        # A client that never sends a byte is closed by the header timeout, and counted.
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port())
        await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert p.metric("tulle_proxy_protocol_errors_total", kind="header_timeout") == 1


async def test_a_kept_connection_routes_new_streams_by_a_swapped_config(origin: int) -> None:
    cfg = h2_config(origin, "http1")
    async with running_proxy(cfg) as p:
        c = await H2Client.connect(p.port())
        first = await c.request("GET", "/echo/a")
        assert first.status == 200
        # Same listener (same socket, same connection); the route now only matches /other.
        cfg["route_tables"][0]["virtual_hosts"][0]["rules"][0]["matches"] = [
            {"path": {"type": "PathPrefix", "value": "/other"}}]
        await p.apply(cfg)
        second = await c.request("GET", "/echo/a")
        assert second.status == 404 and b"no route" in second.body
        assert p.metric("tulle_proxy_downstream_connections_total") == 1
        c.close()


async def test_an_early_upstream_response_closes_the_upstream_stream() -> None:
    async with running_h2_origin() as (port, origin), \
            running_proxy(simple_config(port, cluster_protocol="http2")) as p:
        r, w = await asyncio.open_connection("127.0.0.1", p.port())
        # The origin answers /bytes/N at once, before the (never finished) request body.
        w.write(b"POST /bytes/10 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n")
        await w.drain()
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 200")
        assert await asyncio.wait_for(r.readexactly(10), 10) == b"x" * 10
        # The proxy tells the origin it will send no more: the stream is closed on both sides.
        await asyncio.wait_for(origin.reset_seen.wait(), 5)
        assert origin.resets_received == 1
        w.close()
