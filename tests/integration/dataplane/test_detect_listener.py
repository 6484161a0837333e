"""An `auto` listener: it sniffs HTTP/1, HTTP/2 and TLS, relays the rest, and never stalls a
server that speaks first."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.proxy import free_port, running_proxy

from tulle.dataplane.listeners import detect as detect_listener
from tulle.dataplane.listeners.listener_context import DEFAULT_OPAQUE_PORTS

pytestmark = pytest.mark.both_loops

GREETING = b"220 hello\r\n"


@contextlib.asynccontextmanager
async def server(greeting: bytes = b"", echo: bool = True,
                 ssl_ctx: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """A server that may speak first, then echoes each line back."""
    tasks: set[asyncio.Task[Any]] = set()

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            if greeting:
                w.write(greeting)
            while echo and (line := await r.readline()):
                w.write(b"echo " + line)
                await w.drain()
        finally:
            w.close()

    srv = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=ssl_ctx)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        for t in tasks:
            t.cancel()


def auto_config(upstream: int, *, port: int = 0, cluster_protocol: str = "tcp",
                **listener: Any) -> dict[str, Any]:
    return {
        "admin": {"port": 0},
        "listeners": [{"name": "auto", "port": port, "protocol": "auto", "cluster": "backend",
                       **listener}],
        "clusters": [{"name": "backend", "protocol": cluster_protocol,
                      "endpoints": [{"address": "127.0.0.1", "port": upstream}]}],
    }


async def test_server_first_protocol_on_an_opaque_port_is_not_sniffed() -> None:
    port = free_port()
    cfg = auto_config(0, port=port, opaque_ports=[port], detect_timeout_ms=600_000)
    async with server(GREETING) as upstream:
        cfg["clusters"][0]["endpoints"][0]["port"] = upstream
        async with running_proxy(cfg) as p:
            r, w = await asyncio.open_connection("127.0.0.1", port)
            # The detect timeout is ten minutes: only skipping detection gets us the greeting.
            assert await asyncio.wait_for(r.readline(), 10) == GREETING
            w.write(b"EHLO me\r\n")
            assert await asyncio.wait_for(r.readline(), 10) == b"echo EHLO me\r\n"
            w.close()
            assert p.metric("tulle_proxy_protocol_detected_total", protocol="opaque") == 1


async def test_server_first_protocol_elsewhere_flows_after_the_detect_timeout() -> None:
    async with server(GREETING) as upstream, \
            running_proxy(auto_config(upstream, detect_timeout_ms=200)) as p:
        loop = asyncio.get_running_loop()
        start = loop.time()
        r, w = await asyncio.open_connection("127.0.0.1", p.port("auto"))
        assert await asyncio.wait_for(r.readline(), 10) == GREETING
        waited = loop.time() - start
        w.write(b"EHLO me\r\n")
        assert await asyncio.wait_for(r.readline(), 10) == b"echo EHLO me\r\n"
        w.close()
        # The upstream is dialled only when detection gives up: the greeting cannot come sooner.
        assert waited >= 0.19
        assert p.metric("tulle_proxy_protocol_detected_total", protocol="timeout") == 1


async def test_well_known_server_first_ports_are_opaque_by_default() -> None:
    assert {25, 587, 3306} <= DEFAULT_OPAQUE_PORTS


async def test_client_first_non_http_is_relayed_as_tcp() -> None:
    async with server() as upstream, running_proxy(auto_config(upstream)) as p:
        r, w = await asyncio.open_connection("127.0.0.1", p.port("auto"))
        w.write(b"*1\r\n")
        assert await asyncio.wait_for(r.readline(), 10) == b"echo *1\r\n"
        w.write(b"$4\r\n")
        assert await asyncio.wait_for(r.readline(), 10) == b"echo $4\r\n"
        w.close()
        assert p.metric("tulle_proxy_protocol_detected_total", protocol="tcp") == 1
        assert p.metric("tulle_proxy_tcp_connections_total", listener="auto") == 1


async def test_http1_sent_a_byte_at_a_time_is_still_http(origin: int) -> None:
    cfg = auto_config(origin, cluster_protocol="http1")
    async with running_proxy(cfg) as p:
        r, w = await asyncio.open_connection("127.0.0.1", p.port("auto"))
        for b in b"GET /status/201 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n":
            w.write(bytes([b]))
            await w.drain()
        status = await asyncio.wait_for(r.readline(), 10)
        w.close()
        assert status.startswith(b"HTTP/1.1 201")
        assert p.metric("tulle_proxy_protocol_detected_total", protocol="http1") == 1
        assert p.metric("tulle_proxy_requests_total", response_code="201") == 1
        assert p.metric("tulle_proxy_downstream_connections_total", listener="auto") == 1


async def test_http1_detected_works_with_curl(origin: int) -> None:
    cfg = auto_config(origin, cluster_protocol="http1")
    async with running_proxy(cfg) as p:
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}",
            p.url("auto", "/echo?via=auto"), stdout=subprocess.PIPE)
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        body, _, code = out.rpartition(b"\n")
        assert code == b"200"
        assert b'"path": "/echo?via=auto"' in body
        assert b"x-forwarded-for" in body
        assert p.metric("tulle_proxy_protocol_detected_total", protocol="http1") == 1


async def test_http2_prior_knowledge_is_detected(origin: int) -> None:
    if detect_listener._h2_driver() is None:  # imported on first need, not at import
        pytest.skip("no HTTP/2 downstream driver in this tree yet")
    cfg = auto_config(origin, cluster_protocol="http1")
    async with running_proxy(cfg) as p:
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sS", "--http2-prior-knowledge", "--max-time", "10", "-o", "/dev/null",
            "-w", "%{http_version} %{http_code}", p.url("auto", "/echo"),
            stdout=subprocess.PIPE)
        out, _ = await proc.communicate()
        assert p.metric("tulle_proxy_protocol_detected_total", protocol="http2") == 1
        assert out == b"2 200"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                    "/CN=backend.test", "-addext", "subjectAltName=DNS:backend.test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


async def test_tls_is_passed_through_untouched(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    async with server(ssl_ctx=server_ctx) as upstream, running_proxy(auto_config(upstream)) as p:
        # The client verifies the backend's own certificate through the proxy: end-to-end TLS.
        r, w = await asyncio.open_connection("127.0.0.1", p.port("auto"), ssl=client_ctx,
                                             server_hostname="backend.test")
        w.write(b"secret\n")
        assert await asyncio.wait_for(r.readline(), 10) == b"echo secret\n"
        w.close()
        assert p.metric("tulle_proxy_protocol_detected_total", protocol="tls") == 1


async def test_a_client_that_leaves_without_a_word_is_not_relayed() -> None:
    async with server(GREETING) as upstream, running_proxy(auto_config(upstream)) as p:
        r, w = await asyncio.open_connection("127.0.0.1", p.port("auto"))
        w.close()
        await w.wait_closed()
        loop = asyncio.get_running_loop()
        end = loop.time() + 5
        while p.server.listeners["auto"].connections:
            assert loop.time() < end
            await asyncio.sleep(0.01)
        assert p.metric("tulle_proxy_tcp_connections_total") == 0
        assert p.metric("tulle_proxy_downstream_connections_active", listener="auto") == 0


async def test_a_flood_of_silent_and_slow_connections_times_out_together() -> None:
    """80 raw connections that say nothing and 40 that trickle one byte of a method (one
    detection timer for all, ADR 0071): each is decided at its deadline, the listener keeps
    serving, and nothing is left registered."""
    async with server(GREETING) as upstream, \
            running_proxy(auto_config(upstream, detect_timeout_ms=150)) as p:
        loop = asyncio.get_running_loop()
        port = p.port("auto")
        start = loop.time()
        silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(80)]
        slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(40)]
        for _r, w in slow:
            w.write(b"G")
        # Every silent one is relayed when detection gives up: the greeting arrives, not sooner.
        for r, _w in silent:
            assert await asyncio.wait_for(r.readline(), 10) == GREETING
        assert loop.time() - start >= 0.149
        # The trickling ones went to the HTTP/1 driver (its header timeout), never to the relay.
        assert p.metric("tulle_proxy_protocol_detected_total", protocol="timeout") == 80
        end = loop.time() + 5  # (the trickling ones connected later: later deadlines)
        while p.metric("tulle_proxy_protocol_detected_total", protocol="partial") < 40:
            assert loop.time() < end
            await asyncio.sleep(0.01)
        assert p.metric("tulle_proxy_protocol_detected_total", protocol="partial") == 40
        assert p.metric("tulle_proxy_tcp_connections_total", listener="auto") == 80
        r, w = await asyncio.open_connection("127.0.0.1", port)  # still up, still sniffing
        w.write(b"*1\r\n")
        assert await asyncio.wait_for(r.readline(), 10) == GREETING
        assert await asyncio.wait_for(r.readline(), 10) == b"echo *1\r\n"
        w.close()
        for _r, w in silent + slow:
            w.close()
        end = loop.time() + 5
        while p.server.listeners["auto"].connections:
            assert loop.time() < end
            await asyncio.sleep(0.01)
