"""An upstream may send at most `MAX_INFORMATIONAL` 1xx heads before its final answer (ADR 0115).

Each test runs a real proxy on loopback between a raw client that records every status it is
sent and a raw origin (HTTP/1 bytes, or HTTP/2 frames from the h2 library) that answers one
path with a flood of `103 Early Hints` and another with the legitimate most: `100 Continue`,
then 103s up to the cap, then `200`.  Before the cap, every 1xx of a flood reached the client
and one read of them cost the proxy seconds of its loop (ADR 0110).
"""

from __future__ import annotations

import asyncio
import re

import h2.config
import h2.connection
import h2.events
import pytest
from tests.integration.dataplane.test_h2_audit import StatusesH2
from tests.support.h2raw import request
from tests.support.proxy import running_proxy, simple_config
from tests.support.rawservers import RawServer, raw_server

from tulle.dataplane.exchange import MAX_INFORMATIONAL

FLOOD = 2000
EARLY_HINT = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"
LEGIT = (b"HTTP/1.1 100 Continue\r\n\r\n" + EARLY_HINT * (MAX_INFORMATIONAL - 1)
         + b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


async def h1_origin(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """`/flood`: FLOOD 103s then a 200; anything else: LEGIT.  Keeps the connection."""
    while True:
        head = await r.readuntil(b"\r\n\r\n")
        srv.requests.append(head)
        if head.startswith(b"GET /flood "):
            w.write(EARLY_HINT * FLOOD + b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        else:
            w.write(LEGIT)
        await w.drain()


async def h1_exchange(port: int, path: str) -> list[bytes]:
    """The status codes of every head the client is sent for one GET, up to the final one."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(f"GET {path} HTTP/1.1\r\nhost: a.test\r\n\r\n".encode())
        statuses: list[bytes] = []
        while True:
            head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            m = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
            assert m is not None, head
            statuses.append(m.group(1))
            if not statuses[-1].startswith(b"1"):
                return statuses
    finally:
        w.close()


@pytest.mark.parametrize("downstream", ["http1", "http2"])
async def test_an_http1_upstreams_1xx_flood_is_a_502_with_at_most_the_cap_forwarded(
        downstream: str) -> None:
    async with raw_server(h1_origin) as srv, running_proxy(
            simple_config(srv.port, protocol=downstream)) as p:
        if downstream == "http1":
            flood = await h1_exchange(p.port(), "/flood")
            legit = await h1_exchange(p.port(), "/legit")
        else:
            c = await StatusesH2.connect(p.port())
            assert isinstance(c, StatusesH2)
            sid = c.headers(request("GET", "/flood"))
            await c.wait_stream(sid, timeout=5)
            flood = c.statuses[sid]
            sid = c.headers(request("GET", "/legit"))  # the same connection keeps serving
            await c.wait_stream(sid, timeout=5)
            legit = c.statuses[sid]
            c.close()
        assert flood[-1] == b"502", flood[-3:]
        assert len(flood) - 1 <= MAX_INFORMATIONAL, len(flood)
        assert p.metric("tulle_proxy_requests_total", response_flags="UPE") == 1
        # the listener keeps serving, and the legitimate most passes intact
        assert legit == [b"100"] + [b"103"] * (MAX_INFORMATIONAL - 1) + [b"200"], legit


class _FloodingOrigin(asyncio.Protocol):
    """An h2c origin: `/flood` gets `n` 103 heads in one write and nothing more; anything else
    gets 100, 103s up to the cap, then 200."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.transport: asyncio.Transport | None = None
        self.resets: list[int] = []
        """Error codes of the RST_STREAM frames received (h2 reports none on a stream it
        considers closed, as this one is once its answer is sent: read off the wire)."""
        self._wire = b""
        self._preface = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())  # type: ignore[union-attr]

    def _scan(self, data: bytes) -> None:
        self._wire += data
        if self._preface:
            if len(self._wire) < 24:
                return
            self._wire, self._preface = self._wire[24:], False
        while len(self._wire) >= 9:
            n = int.from_bytes(self._wire[:3], "big")
            if len(self._wire) < 9 + n:
                return
            if self._wire[3] == 3:  # RST_STREAM
                self.resets.append(int.from_bytes(self._wire[9:13], "big"))
            self._wire = self._wire[9 + n:]

    def data_received(self, data: bytes) -> None:
        self._scan(data)
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            return
        for ev in events:
            if not isinstance(ev, h2.events.RequestReceived):
                continue
            sid = ev.stream_id
            flood = dict(ev.headers)[b":path"] == b"/flood"
            hint = [(b":status", b"103"), (b"link", b"</style.css>; rel=preload")]
            if flood:  # and no final answer: the stream stays open until the proxy resets it
                for _ in range(self.n):
                    self.conn.send_headers(sid, hint)
                continue
            self.conn.send_headers(sid, [(b":status", b"100")])
            for _ in range(MAX_INFORMATIONAL - 1):
                self.conn.send_headers(sid, hint)
            self.conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"2")])
            self.conn.send_data(sid, b"ok", end_stream=True)
        if self.transport is not None:
            self.transport.write(self.conn.data_to_send())


@pytest.mark.parametrize("downstream", ["http1", "http2"])
async def test_an_http2_upstreams_1xx_flood_resets_its_stream_and_is_a_502(
        downstream: str) -> None:
    loop = asyncio.get_running_loop()
    origin = _FloodingOrigin(FLOOD)
    server = await loop.create_server(lambda: origin, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_proxy(simple_config(port, protocol=downstream,
                                               cluster_protocol="http2")) as p:
            if downstream == "http1":
                flood = await h1_exchange(p.port(), "/flood")
                legit = await h1_exchange(p.port(), "/legit")
            else:
                c = await StatusesH2.connect(p.port())
                assert isinstance(c, StatusesH2)
                sid = c.headers(request("GET", "/flood"))
                await c.wait_stream(sid, timeout=5)
                flood = c.statuses[sid]
                sid = c.headers(request("GET", "/legit"))
                await c.wait_stream(sid, timeout=5)
                legit = c.statuses[sid]
                c.close()
            assert flood[-1] == b"502", flood[-3:]
            assert len(flood) - 1 <= MAX_INFORMATIONAL, len(flood)
            assert p.metric("tulle_proxy_requests_total", response_flags="UPE") == 1
            assert origin.resets == [1], origin.resets  # RST_STREAM(PROTOCOL_ERROR), once
            assert legit == [b"100"] + [b"103"] * (MAX_INFORMATIONAL - 1) + [b"200"], legit
    finally:
        server.close()
