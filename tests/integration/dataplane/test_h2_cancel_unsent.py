"""A request the client resets in the read that opened it never reaches an HTTP/2 origin
(ADR 0132).

A real proxy on loopback between a raw client (frames written by hand) and an h2c origin that
records every byte it receives.  The client's HEADERS and its RST_STREAM arrive in one read:
the proxy opens the upstream stream and resets it in the same loop turn, before the pool's
write.  libnghttp2 then sent a GET or a DELETE all the same (only a request with a body was
cancelled unsent), and the origin served a request nobody wanted; the h2 engine sent every
such request, and an RST_STREAM after it.  Run under either engine (TULLE_H2_ENGINE).
"""

from __future__ import annotations

import asyncio

import h2.config
import h2.connection
import h2.events
import pytest
from hpack import Decoder
from tests.support import h2raw
from tests.support.h2raw import RawH2, request
from tests.support.proxy import running_proxy, simple_config

CANCEL = 0x8


class RecordingOrigin(asyncio.Protocol):
    """An h2c origin (the h2 library, so a frame the proxy should not send is an error here
    too) that records the frames it receives and answers each request 200 with a body."""

    def __init__(self) -> None:
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.transport: asyncio.Transport | None = None
        self.wire = b""
        self.errors: list[str] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.wire += data
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.errors.append(repr(exc))
            return
        reset = {ev.stream_id for ev in events if isinstance(ev, h2.events.StreamReset)}
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived) and ev.stream_id not in reset:
                sid = ev.stream_id or 0
                self.conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"2")])
                self.conn.send_data(sid, b"ok", end_stream=True)
        if self.transport is not None:
            self.transport.write(self.conn.data_to_send())

    def frames(self, typ: int) -> list[int]:
        """The stream id of every frame of type `typ` received, in order."""
        out = []
        wire = self.wire[len(h2raw.PREFACE):]
        while len(wire) >= 9:
            n = int.from_bytes(wire[:3], "big")
            if wire[3] == typ:
                out.append(int.from_bytes(wire[5:9], "big") & 0x7FFFFFFF)
            wire = wire[9 + n:]
        return out

    def paths(self) -> list[bytes]:
        """The `:path` of every request the origin took, in order."""
        out = []
        wire = self.wire[len(h2raw.PREFACE):]
        dec = Decoder()
        while len(wire) >= 9:
            n = int.from_bytes(wire[:3], "big")
            if wire[3] == h2raw.HEADERS:
                fields = dict(dec.decode(wire[9:9 + n], raw=True))
                out.append(bytes(fields[b":path"]))
            wire = wire[9 + n:]
        return out


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_a_request_the_client_resets_in_the_same_read_never_reaches_the_origin(
        method: str) -> None:
    loop = asyncio.get_running_loop()
    origin = RecordingOrigin()
    server = await loop.create_server(lambda: origin, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_proxy(simple_config(port, protocol="http2",
                                               cluster_protocol="http2")) as p:
            c = await RawH2.connect(p.port())
            first = c.headers(request("GET", "/first"))  # the upstream connection is made
            await c.wait_stream(first)
            assert c.status[first] == 200
            for i in range(3):  # HEADERS and RST_STREAM in one write, three times
                sid, raw = c.headers_frame(request(method, f"/cancelled-{i}"))
                c.write(raw + h2raw.rst(sid, CANCEL))
                await asyncio.sleep(0.05)
            after = c.headers(request("GET", "/after"))  # the connection goes on
            await c.wait_stream(after)
            assert c.status[after] == 200
            c.close()
            assert origin.paths() == [b"/first", b"/after"], "a cancelled request was sent"
            assert origin.frames(h2raw.RST_STREAM) == [], "RST_STREAM for a stream never sent"
            assert origin.errors == []
            pools = p.server.clusters.clusters["backend"].pools.values()
            conns = [conn for pool in pools for conn in pool.all]  # type: ignore[attr-defined]
            assert len(conns) == 1 and conns[0].codec.open_outbound_streams == 0
    finally:
        server.close()
