"""An attacker's audit of the HTTP/2 path (h2 -> HTTP/1.1 and h2 -> h2): what it found.

Each test runs a real proxy on loopback between a raw peer (frames written by hand,
tests/support/h2raw.py) and a raw origin that writes exactly the bytes given, and asserts what
the other side receives.  Each failed on the tree it was written against.
"""

from __future__ import annotations

import asyncio

import pytest
from tests.support import h2raw
from tests.support.h2raw import RawH2, request
from tests.support.proxy import RunningProxy, running_proxy, simple_config
from tests.support.rawservers import Handler, RawServer, raw_server

# -- an origin's status code outside 100..599 --------------------------------------------------


class StatusesH2(RawH2):
    """RawH2 that keeps every `:status` of every header block (RawH2 keeps the first only)."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: dict[int, list[bytes]] = {}

    def _frame(self, typ: int, flags: int, sid: int, payload: bytes) -> None:
        if typ == h2raw.HEADERS:
            fields = self.decoder.decode(payload, raw=True)
            for n, v in fields:
                if n == b":status":
                    self.statuses.setdefault(sid, []).append(v)
                    self.status.setdefault(sid, int(v))
            if flags & h2raw.END_STREAM:
                self._end(sid)
            return
        super()._frame(typ, flags, sid, payload)


def answers_with(status_line: bytes) -> Handler:
    async def handler(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        srv.requests.append(await r.readuntil(b"\r\n\r\n"))
        w.write(status_line + b"\r\ncontent-length: 2\r\n\r\nok")
        await w.drain()
        await r.read()  # keep the connection open: the proxy must not wait for more
    return handler


@pytest.mark.parametrize("status_line", [b"HTTP/1.1 099 Weird", b"HTTP/1.1 000 Zero"],
                         ids=["099", "000"])
async def test_an_origin_status_below_100_is_a_502_and_never_reaches_an_h2_client(
        status_line: bytes) -> None:
    # RFC 9110 15: a status code is three digits, 100..599; RFC 9113 8.3.2: `:status` carries
    # it as three digits.  llhttp accepts any three digits; the HTTP/1 response codec took
    # 099 / 000 for a 1xx (status < 200), and the h2 driver sent `:status: 99` / `:status: 0`
    # (malformed to any HTTP/2 client) and then nothing: the stream hung.  An upstream that
    # breaks the protocol is 502 (UPE), as for any other bad response head.
    async with raw_server(answers_with(status_line)) as srv, running_proxy(
            simple_config(srv.port, protocol="http2")) as p:
        c = await StatusesH2.connect(p.port())
        assert isinstance(c, StatusesH2)
        sid = c.headers(request("GET", "/"))
        try:
            await c.wait_stream(sid, timeout=3)
        except TimeoutError:
            pass
        sent = c.statuses.get(sid, [])
        assert all(len(s) == 3 and 100 <= int(s) <= 599 for s in sent), sent
        assert c.ended[sid].is_set(), "the stream hangs (until the route timeout)"
        assert c.status.get(sid) == 502 or c.resets.get(sid) is not None, (sent, c.resets)
        c.close()


async def test_an_origin_status_below_100_is_a_502_for_an_http1_client_too() -> None:
    # The same codec under an HTTP/1 downstream wrote "HTTP/1.1 99 Weird" (a status line that
    # is not 3DIGIT, RFC 9112 4) and then hung.
    async with raw_server(answers_with(b"HTTP/1.1 099 Weird")) as srv, running_proxy(
            simple_config(srv.port)) as p:
        r, w = await asyncio.open_connection("127.0.0.1", p.port())
        w.write(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n")
        line = await asyncio.wait_for(r.readuntil(b"\r\n"), 3)
        assert line.startswith(b"HTTP/1.1 502 "), line
        rest = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 3)  # a whole head, no hang
        assert rest
        w.close()


class _BadStatusOrigin(asyncio.Protocol):
    """An h2c origin (the h2 library, its own checks off) answering every request with the
    `:status` value given, a 2-byte body and END_STREAM."""

    def __init__(self, status: bytes) -> None:
        import h2.config
        import h2.connection

        self.status = status
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, validate_inbound_headers=False,
            validate_outbound_headers=False, normalize_outbound_headers=False))
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        import h2.events

        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                self.conn.send_headers(ev.stream_id, [(b":status", self.status),
                                                      (b"content-length", b"2")])
                self.conn.send_data(ev.stream_id, b"ok", end_stream=True)
        if self.transport is not None:
            self.transport.write(self.conn.data_to_send())


@pytest.mark.parametrize("status", [b"099", b"000"])
async def test_an_h2_origin_status_below_100_is_a_502_and_never_reaches_an_h2_client(
        status: bytes) -> None:
    # The h2 -> h2 path: libnghttp2 (client side) checks only that `:status` is three digits,
    # `response_head` takes int(v) as it is, and the downstream writes it back as b"%d":
    # `:status: 99` / `:status: 0` reach the client with the origin's body.
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _BadStatusOrigin(status), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_proxy(simple_config(port, protocol="http2",
                                               cluster_protocol="http2")) as p:
            c = await StatusesH2.connect(p.port())
            assert isinstance(c, StatusesH2)
            sid = c.headers(request("GET", "/"))
            await c.wait_stream(sid, timeout=3)
            sent = c.statuses.get(sid, [])
            assert all(len(s) == 3 and 100 <= int(s) <= 599 for s in sent), sent
            assert c.status.get(sid) == 502 or c.resets.get(sid) is not None, (sent, c.resets)
            c.close()
    finally:
        server.close()


# -- a reset flood from a client that does not read (CVE-2019-9514) ---------------------------

def queued_bytes(p: RunningProxy) -> int:
    """The largest write buffer of the proxy's downstream connections (bytes it queued for a
    client, beyond what the kernel took)."""
    transports = [getattr(conn, "transport", None)
                  for h in p.server._all_handles() for conn in h.connections]
    sizes = [t.get_write_buffer_size() for t in transports if t is not None]
    return max(sizes, default=0)


@pytest.mark.timeout(90)
async def test_rst_stream_answers_to_a_client_that_does_not_read_are_bounded() -> None:
    # CVE-2019-9514 ("reset flood"): open streams with an invalid request each, so that the
    # server answers each with RST_STREAM, and never read.  The guard bounds the PING and
    # SETTINGS ACKs queued for a client that does not read (`h2_control_queue_flood`), and
    # nghttp2's own outbound flood limit (which counts RST_STREAM too) never sees a queue: the
    # driver drains nghttp2 into the transport after every read.  A malformed request is not a
    # premature reset either (`_on_request` returns before the stream is counted), so nothing
    # bounded it: measured, 1,000,000 such HEADERS (14 MB in) left 10 MB of RST_STREAM frames
    # queued on the transport and the connection open.  Envoy bounds all outbound frames
    # queued for a connection (`max_outbound_frames`, 10,000).
    #
    # The concurrency limit is raised (Envoy's default is 2^31-1): a malformed stream holds a
    # slot until its RST_STREAM is written, and with 100 slots a kernel that coalesces more
    # than 100 of these HEADERS into one read trips nghttp2's limit (GOAWAY PROTOCOL_ERROR)
    # by accident; a peer pacing its writes does not.
    async with raw_server(answers_ok) as srv, running_proxy(simple_config(
            srv.port, protocol="http2",
            settings={"buffer_high_water_bytes": 4096,
                      "http2_max_concurrent_streams": 100_000})) as p:
        c = await RawH2.connect(p.port(), rcvbuf=4096)
        await asyncio.sleep(0.05)  # the SETTINGS exchange is done
        c.stop_reading()
        # :method GET, :scheme http, :authority "a" (no :path): malformed, RFC 9113 8.3.1
        block = b"\x82\x86\x41\x01a"
        most = 0
        for i in range(17_500):  # 700,000 streams, 40 a write
            batch = b""
            for _ in range(40):
                batch += h2raw.frame(h2raw.HEADERS, h2raw.END_HEADERS | h2raw.END_STREAM,
                                     c.next_sid, block)
                c.next_sid += 2
            c.write(batch)
            for _ in range(3):
                await asyncio.sleep(0)
            if i % 500 == 0:
                most = max(most, queued_bytes(p))
            if c.closed.is_set() or c.transport is None:
                break
        most = max(most, queued_bytes(p))
        c.close()
        assert most < 1_048_576, f"{most} bytes queued for a client that reads nothing"
        assert srv.requests == []
        fresh = await RawH2.connect(p.port())
        sid = fresh.headers(request("GET", "/after"))
        await fresh.wait_stream(sid)
        assert fresh.status.get(sid) == 200
        fresh.close()


async def answers_ok(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    while True:
        srv.requests.append(await r.readuntil(b"\r\n\r\n"))
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await w.drain()
