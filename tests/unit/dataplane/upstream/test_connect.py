"""The one dialler: socket options, the timeout, and failures that say why."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import cast

import pytest
from tests.support.certs import self_signed
from tests.support.proxy import free_port

from tulle.dataplane.tlsread import TLSReader
from tulle.dataplane.upstream.connect import ConnectFailed, dial_socket, dial_transport

pytestmark = pytest.mark.both_loops


async def test_a_socket_is_connected_non_blocking_without_nagle() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sock = await dial_socket("127.0.0.1", port, 1.0)
        with sock:
            assert sock.getpeername() == ("127.0.0.1", port)
            assert not sock.getblocking()
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        sock = await dial_socket("localhost", port, 1.0)  # a name is resolved
        sock.close()
    finally:
        server.close()


async def test_a_transport_drives_the_protocol() -> None:
    got = asyncio.get_running_loop().create_future()

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        got.set_result(await r.readexactly(5))
        w.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        transport, proto = await dial_transport(asyncio.Protocol, "127.0.0.1", port, 1.0)
        assert isinstance(proto, asyncio.Protocol)
        assert transport.get_protocol() is proto  # plaintext: nothing in between
        sock = transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        transport.write(b"hello")
        assert await asyncio.wait_for(got, 5) == b"hello"
        transport.close()
    finally:
        server.close()


async def test_refused_says_so() -> None:
    port = free_port()
    with pytest.raises(ConnectFailed) as exc:
        await dial_socket("127.0.0.1", port, 1.0)
    assert exc.value.what == "connection refused"
    with pytest.raises(ConnectFailed) as exc:
        await dial_transport(asyncio.Protocol, "127.0.0.1", port, 1.0)
    assert str(exc.value) == f"cannot connect to 127.0.0.1:{port}: connection refused"


async def test_a_silent_tls_peer_times_out_within_the_bound() -> None:
    """The timeout covers the TLS handshake, not only the TCP connect."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # never answers
    port = server.sockets[0].getsockname()[1]
    ctx = ssl.create_default_context()
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        with pytest.raises(ConnectFailed) as exc:
            await dial_transport(asyncio.Protocol, "127.0.0.1", port, 0.05, ssl_context=ctx,
                                 server_name="example.test")
        assert exc.value.what == "timed out"
        assert loop.time() - began < 2
    finally:
        server.close()


async def test_a_name_that_does_not_resolve_fails_cleanly() -> None:
    with pytest.raises(ConnectFailed) as exc:
        await dial_socket("no-such-host.invalid", 1, 2.0)
    assert exc.value.what.startswith("does not resolve")


class _Collect(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.got = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.data.endswith(b"\n") and not self.got.done():
            self.got.set_result(self.data)


async def test_a_tls_transport_reads_through_the_shared_buffer(tmp_path: Path) -> None:
    """ADR 0063: over TLS the protocol is read by a `TLSReader` (no 256 KiB block per read);
    the caller still gets its own protocol, which still gets `bytes`."""
    crt, key = self_signed(tmp_path)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(crt, key)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(crt)

    async def greet(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"hello over tls\n")
        await w.drain()

    server = await asyncio.start_server(greet, "127.0.0.1", 0, ssl=sctx)
    port = server.sockets[0].getsockname()[1]
    try:
        transport, proto = await dial_transport(_Collect, "127.0.0.1", port, 5.0,
                                                ssl_context=cctx, server_name="localhost")
        assert isinstance(proto, _Collect)
        reader = transport.get_protocol()
        assert isinstance(reader, TLSReader) and reader.app is proto
        assert await asyncio.wait_for(proto.got, 5) == b"hello over tls\n"
        assert type(proto.data) is bytes
        transport.close()
    finally:
        server.close()


class _Driver(asyncio.Protocol):
    """A driver that speaks first, as the HTTP/2 one does (its preface in `connection_made`),
    and records every callback it hears, in order, into the dial's shared `log`."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        log.append("made")

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.log.append("connection_made")
        cast(asyncio.Transport, transport).write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")

    def data_received(self, data: bytes) -> None:
        self.log.append(f"data {data!r}")

    def eof_received(self) -> bool:
        self.log.append("eof")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.log.append("lost")


async def _server_first_tls(tmp_path: Path) -> tuple[asyncio.Server, ssl.SSLContext,
                                                     list[bytearray]]:
    """A TLS server that greets each client as soon as its handshake is done, records what it
    receives, and the client context that trusts it."""
    crt, key = self_signed(tmp_path)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(crt, key)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(crt)
    received: list[bytearray] = []

    async def greet(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        buf = bytearray()
        received.append(buf)
        w.write(b"220 greetings from the server\r\n")
        try:
            while data := await asyncio.wait_for(r.read(65536), 5):
                buf += data
        except (TimeoutError, ConnectionError, ssl.SSLError):
            pass
        finally:
            w.close()

    return await asyncio.start_server(greet, "127.0.0.1", 0, ssl=sctx), cctx, received


async def test_a_refused_server_never_meets_the_protocol(tmp_path: Path) -> None:
    """ADR 0030: the peer check runs as the handshake ends, before the caller's protocol is
    made.  A refused server is sent nothing of the application protocol (though the driver
    would write in `connection_made`), and nothing it sends -- a server-first greeting --
    reaches the protocol (for the TCP relay: the downstream client).  The dial fails with the
    check's reason."""
    server, cctx, received = await _server_first_tls(tmp_path)
    port = server.sockets[0].getsockname()[1]
    log: list[str] = []
    seen: list[object] = []

    def refuse(obj: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
        seen.append(obj)
        log.append("check")
        return "TLS: server identity spiffe://x/impostor is not one expected for the destination"

    try:
        with pytest.raises(ConnectFailed) as exc:
            await dial_transport(lambda: _Driver(log), "127.0.0.1", port, 5.0,
                                 ssl_context=cctx, server_name="localhost", peer_check=refuse)
        assert exc.value.what.startswith("TLS: server identity spiffe://x/impostor")
        # The check judged the verified certificate of the finished handshake.
        assert isinstance(seen[0], ssl.SSLObject) and seen[0].getpeercert()
        for _ in range(500):  # until the server has finished its handshake
            if received:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # let its greeting, and anything sent to it, arrive
        assert log == ["check"]  # no driver made: nothing written, nothing read, no callback
        assert received, "the server's handshake did not complete"
        assert [bytes(b) for b in received] == [b""]
    finally:
        server.close()


async def test_an_accepted_server_meets_the_protocol_after_the_check(tmp_path: Path) -> None:
    """Accepted, the protocol is made after the check, behind the `TLSReader`, and hears the
    server's greeting; the server hears what it wrote in `connection_made`."""
    server, cctx, received = await _server_first_tls(tmp_path)
    port = server.sockets[0].getsockname()[1]
    log: list[str] = []

    def accept(obj: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
        log.append("check")
        return None

    try:
        transport, proto = await dial_transport(
            lambda: _Driver(log), "127.0.0.1", port, 5.0, ssl_context=cctx,
            server_name="localhost", peer_check=accept)
        reader = transport.get_protocol()
        assert isinstance(reader, TLSReader) and reader.app is proto
        for _ in range(500):
            if any(e.startswith("data") for e in log) and received and received[0]:
                break
            await asyncio.sleep(0.01)
        assert log[:3] == ["check", "made", "connection_made"]
        assert log[3] == f"data {b'220 greetings from the server' + bytes([13, 10])!r}"
        assert bytes(received[0]) == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
        transport.close()
    finally:
        server.close()
