"""A TLS listener's ends, with a raw peer that records the bytes it receives: a ClientHello
followed at once by the client's FIN, and a request followed at once by close_notify.  The
proxy answers with TLS records only (never an HTTP byte in the clear), closes the connection
within its handshake timeout, forwards nothing to the application, logs no uvloop warning,
and the listener serves the next client."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any

import pytest
from aiohttp import web
from tests.integration.dataplane.test_mtls import CLIENT_ID, mtls_client
from tests.integration.dataplane.test_mtls_attacks import request, server_config
from tests.support.ca import TestCA
from tests.support.controlplane import serve_handler
from tests.support.proxy import running_proxy


def _client_hello(ctx: ssl.SSLContext) -> bytes:
    """The bytes a real TLS 1.3 client sends first."""
    out = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out, server_hostname="api")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


async def _raw(port: int, first: bytes, seconds: float = 10.0) -> tuple[bytes, bool]:
    """Send `first`, then FIN; everything received until the server closes (bounded), and
    whether it did."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(first)
    await writer.drain()
    writer.write_eof()
    got = b""
    closed = False
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while len(got) < 1 << 20 and loop.time() < end:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), end - loop.time())
        except TimeoutError:
            break
        except ConnectionError:  # a reset is a close too
            closed = True
            break
        if not chunk:
            closed = True
            break
        got += chunk
    writer.close()
    return got, closed


async def test_a_client_hello_then_fin_gets_tls_records_only_and_a_close(
        caplog: pytest.LogCaptureFixture) -> None:
    ca = TestCA()
    hits: list[str] = []

    async def app(req: web.Request) -> web.Response:
        hits.append(req.path)
        return web.Response(text="app")

    async with serve_handler(app) as port_app, running_proxy(
            server_config(ca, port_app, "explicit")) as server:
        port = server.port("in")
        ctx = mtls_client(ca, CLIENT_ID)
        for _ in range(3):
            got, closed = await _raw(port, _client_hello(ctx))
            assert closed
            assert got == b"" or got[:1] in (b"\x15", b"\x16"), got[:16]  # alert or handshake
            assert b"HTTP/" not in got
        assert hits == []
        # the listener serves on (its route refuses every request: a 403 is serving)
        assert (await request(port, ctx)).startswith(b"HTTP/1.1 403")
    assert not [r for r in caplog.records if "eof_received" in r.getMessage()]


def _allowing(ca: TestCA, app: int) -> dict[str, Any]:
    """`server_config` with its route letting requests through to the application."""
    cfg = server_config(ca, app, "explicit")
    del cfg["route_tables"][0]["virtual_hosts"][0]["rules"][0]["filters"]
    return cfg


async def test_a_request_in_flight_then_close_notify_ends_cleanly_without_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    """The close_notify arrives while the request waits for the application: the HTTP/1
    driver would keep a plain connection half-open to answer; over TLS the transport shuts
    down, and no "returning true from eof_received() has no effect" is logged."""
    ca = TestCA()
    caplog.set_level(logging.WARNING)
    seen = asyncio.Event()

    async def slow(req: web.Request) -> web.Response:
        seen.set()
        await asyncio.sleep(0.3)
        return web.Response(text="app")

    async with serve_handler(slow) as port_app, running_proxy(_allowing(ca, port_app)) as server:
        port = server.port("in")
        ctx = mtls_client(ca, CLIENT_ID)
        for _ in range(3):
            seen.clear()
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                      server_hostname="api")
            writer.write(b"GET / HTTP/1.1\r\nhost: api\r\n\r\n")
            await asyncio.wait_for(seen.wait(), 5)  # in flight at the application
            writer.close()  # close_notify while it waits
            await asyncio.wait_for(writer.wait_closed(), 10)
        await asyncio.sleep(0.5)  # the held responses find their connections gone
        status, _ = await _get(port, ctx)
        assert status == b"HTTP/1.1 200 OK"
    assert not [r for r in caplog.records if "eof_received" in r.getMessage()]


async def _get(port: int, ctx: ssl.SSLContext) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                  server_hostname="api")
    writer.write(b"GET / HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], body
