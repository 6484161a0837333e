"""`TLSReader` (ADR 0063): decrypted bytes read into one shared buffer reach the driver as
`bytes`, whole and in order, on real TLS connections over loopback, also when connections
interleave and when a read fills the buffer.  `DirectSSLObject` (ADR 0067): the transports call
OpenSSL's read, write and pending directly and behave as with `ssl.SSLObject`."""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from tests.support.certs import self_signed

from tulle.dataplane.tlsread import BUFFER_SIZE, DirectSSLObject, TLSReader, shared_buffer

pytestmark = pytest.mark.both_loops

P = TypeVar("P", bound=asyncio.Protocol)


async def _tls_server(sctx: ssl.SSLContext, make: Callable[[], P]
                      ) -> tuple[asyncio.Server, int, asyncio.Queue[P]]:
    """A TLS server on loopback whose every connection is a `TLSReader` in front of `make()`;
    the queue gets each driver as its connection is accepted."""
    made: asyncio.Queue[P] = asyncio.Queue()

    def factory() -> TLSReader:
        rec = make()
        made.put_nowait(rec)
        return TLSReader(rec)

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0, ssl=sctx)
    return server, server.sockets[0].getsockname()[1], made



class Recorder(asyncio.Protocol):
    """A driver: what it was told, in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: list[bytes] = []
        self.types: set[type] = set()
        self.lost: asyncio.Future[Exception | None] = (
            asyncio.get_running_loop().create_future())
        self.eof = False
        self.paused = 0
        self.resumed = 0
        self.size = 0
        self.waiting: tuple[int, asyncio.Future[None]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.types.add(type(data))
        self.chunks.append(data)
        self.size += len(data)
        if self.waiting is not None and self.size >= self.waiting[0]:
            self.waiting[1].set_result(None)
            self.waiting = None

    async def until(self, size: int) -> None:
        """Returns once `size` bytes in all have arrived."""
        if self.size < size:
            fut = asyncio.get_running_loop().create_future()
            self.waiting = (size, fut)
            await asyncio.wait_for(fut, 10)

    def eof_received(self) -> bool | None:
        self.eof = True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1

    def received(self) -> bytes:
        return b"".join(self.chunks)


class CountingReader(TLSReader):
    """Counts the reads uvloop / asyncio made into the buffer."""

    __slots__ = ("reads",)

    def __init__(self, app: asyncio.Protocol) -> None:
        super().__init__(app)
        self.reads = 0

    def buffer_updated(self, nbytes: int) -> None:
        self.reads += 1
        super().buffer_updated(nbytes)


@asynccontextmanager
async def tls_server(tmp_path: Path) -> AsyncIterator[
        tuple[int, asyncio.Queue[CountingReader], ssl.SSLContext]]:
    """A TLS server whose connections are read by a `CountingReader` in front of a
    `Recorder`; yields (port, each connection's reader as it comes, a client context)."""
    crt, key = self_signed(tmp_path)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(crt, key)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(crt)
    readers: asyncio.Queue[CountingReader] = asyncio.Queue()

    def factory() -> CountingReader:
        r = CountingReader(Recorder())
        readers.put_nowait(r)
        return r

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=sctx)
    try:
        yield server.sockets[0].getsockname()[1], readers, cctx
    finally:
        server.close()


def _rec(r: CountingReader) -> Recorder:
    assert isinstance(r.app, Recorder)
    return r.app


async def test_a_large_body_arrives_whole_as_bytes_through_the_buffer(tmp_path: Path) -> None:
    payload = os.urandom(3 * BUFFER_SIZE + 12345)  # more than one buffer's worth
    async with tls_server(tmp_path) as (port, readers, cctx):
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=cctx,
                                                  server_hostname="localhost")
        writer.write(b"hello" + payload)
        await writer.drain()
        server_side = await asyncio.wait_for(readers.get(), 10)
        rec = _rec(server_side)
        await rec.until(5 + len(payload))
        assert rec.received() == b"hello" + payload
        assert rec.types == {bytes}  # never the shared buffer itself
        assert server_side.reads >= 2  # the buffered path ran (the loop called it)
        writer.close()
        await asyncio.wait_for(rec.lost, 10)  # the end reached the driver too


async def test_connections_interleaving_never_see_each_others_bytes(tmp_path: Path) -> None:
    async with tls_server(tmp_path) as (port, readers, cctx):
        writers = []
        recs = []
        for _ in range(3):
            _, w = await asyncio.open_connection("127.0.0.1", port, ssl=cctx,
                                                 server_hostname="localhost")
            writers.append(w)
            recs.append(_rec(await asyncio.wait_for(readers.get(), 10)))
        sent: list[list[bytes]] = [[], [], []]
        for i in range(60):  # round-robin: each connection's reads fall between the others'
            for k, w in enumerate(writers):
                chunk = bytes([65 + k]) * (1000 + 37 * i)
                sent[k].append(chunk)
                w.write(chunk)
            await asyncio.gather(*(w.drain() for w in writers))
        for rec, s in zip(recs, sent, strict=True):
            want = b"".join(s)
            await rec.until(len(want))
            assert rec.received() == want
        for w in writers:
            w.close()


async def test_the_end_of_the_connection_and_write_flow_control_reach_the_driver() -> None:
    rec = Recorder()
    reader = TLSReader(rec)
    reader.pause_writing()
    reader.resume_writing()
    assert reader.eof_received() is False and rec.eof
    reader.connection_lost(None)
    assert (rec.paused, rec.resumed) == (1, 1)
    assert rec.lost.done() and rec.lost.result() is None
    reader.data_received(b"early")  # a transport that calls the plain method still works
    assert rec.received() == b"early"


class HalfOpen(Recorder):
    """A driver that asks to stay open after the peer's EOF (HTTP/1 after whole requests)."""

    def eof_received(self) -> bool | None:
        super().eof_received()
        return True


async def test_a_close_notify_closes_the_connection_without_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The transport shuts down after the peer's close_notify whatever the protocol answers;
    the reader answers False, so no "returning true from eof_received() has no effect" is
    logged for each such connection, and the driver still hears the EOF and the end."""
    cert, key = self_signed(tmp_path)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(cert, key)
    server, port, made = await _tls_server(sctx, HalfOpen)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.check_hostname, cctx.verify_mode = False, ssl.CERT_NONE
    async with server:
        _, w = await asyncio.open_connection("127.0.0.1", port, ssl=cctx)
        rec = await asyncio.wait_for(made.get(), 5)
        w.write(b"GET / HTTP/1.1\r\n\r\n")
        await rec.until(18)
        w.close()  # close_notify, then the connection's end
        await asyncio.wait_for(rec.lost, 5)
        assert rec.eof
    assert not [r for r in caplog.records if "eof_received" in r.getMessage()]


class Pausing(Recorder):
    """Pauses reading at its first bytes, as a driver under backpressure does."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport is not None and len(self.chunks) == 1:
            self.transport.pause_reading()


async def test_a_driver_that_pauses_reading_gets_nothing_more_until_it_resumes(
        tmp_path: Path) -> None:
    """A peer flooding a paused connection: the driver hears nothing more until it resumes
    (the reader honours `pause_reading` as the copied path did; what waits stays in the
    kernel and the TLS layer, bounded by their limits), then gets every byte in order."""
    crt, key = self_signed(tmp_path)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(crt, key)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(crt)
    server, port, made = await _tls_server(sctx, Pausing)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=cctx,
                                                  server_hostname="localhost")
        rec = await asyncio.wait_for(made.get(), 10)
        writer.write(b"first")
        await rec.until(5)
        flood = b"y" * (8 * 1024 * 1024)
        writer.write(flood)  # far more than the socket buffers hold
        await writer.drain()
        # A sync point without a sleep: a second connection's handshake and first bytes take
        # many loop turns, in each of which the paused connection has bytes to read.
        _, second = await asyncio.open_connection("127.0.0.1", port, ssl=cctx,
                                                  server_hostname="localhost")
        other = await asyncio.wait_for(made.get(), 10)
        second.write(b"ping")
        await other.until(4)
        assert rec.size == 5  # nothing since the pause
        second.close()
        assert rec.transport is not None
        rec.transport.resume_reading()
        await rec.until(5 + len(flood))
        assert rec.received() == b"first" + flood
        writer.close()
    finally:
        server.close()


def test_one_buffer_per_thread() -> None:
    """OpenSSL decrypts with the GIL released: two threads' loops never share a buffer."""
    mine = shared_buffer()
    assert shared_buffer() is mine  # one per thread, made once
    theirs: list[object] = []
    t = threading.Thread(target=lambda: theirs.append(shared_buffer()))
    t.start()
    t.join()
    assert theirs and theirs[0] is not mine


class Echoing(Recorder):
    """Writes back every chunk it gets (the server side of the exchange below)."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        assert self.transport is not None
        self.transport.write(data)


def _direct_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    crt, key = self_signed(tmp_path)
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.load_cert_chain(crt, key)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.load_verify_locations(crt)
    sctx.sslobject_class = cctx.sslobject_class = DirectSSLObject
    return sctx, cctx


def _is_direct(obj: object) -> None:
    """The transport's SSL object calls OpenSSL's methods with no Python frame between."""
    assert isinstance(obj, DirectSSLObject) and isinstance(obj, ssl.SSLObject)
    inner = obj._sslobj  # type: ignore[attr-defined]
    for name in ("read", "write", "pending"):
        method = getattr(obj, name)
        assert type(method).__name__ == "builtin_function_or_method", name
        assert method.__self__ is inner, name


async def test_direct_ssl_objects_carry_both_directions_whole_and_end_cleanly(
        tmp_path: Path) -> None:
    """Both ends with `DirectSSLObject`, the server read by a `TLSReader`: a payload larger
    than the shared buffer goes out in many records and comes back echoed, byte for byte; the
    client's close (close_notify) reaches the server's driver as the end of the connection."""
    sctx, cctx = _direct_contexts(tmp_path)
    loop = asyncio.get_running_loop()
    server, port, made = await _tls_server(sctx, Echoing)
    try:
        client = Recorder()
        transport, _ = await loop.create_connection(lambda: client, "127.0.0.1", port,
                                                    ssl=cctx, server_hostname="localhost")
        transport.set_protocol(TLSReader(client))
        echo = await asyncio.wait_for(made.get(), 10)
        payload = os.urandom(2 * BUFFER_SIZE + 777)
        small = b"GET / HTTP/1.1\r\n\r\n"
        transport.write(small)
        await client.until(len(small))
        transport.write(payload)
        await client.until(len(small) + len(payload))
        assert client.received() == small + payload
        assert echo.received() == small + payload
        _is_direct(transport.get_extra_info("ssl_object"))
        assert echo.transport is not None
        _is_direct(echo.transport.get_extra_info("ssl_object"))
        transport.close()
        assert await asyncio.wait_for(echo.lost, 10) is None
    finally:
        server.close()


async def test_a_direct_ssl_object_fails_an_untrusted_server_as_before(tmp_path: Path) -> None:
    """Errors are OpenSSL's, unchanged: a client that does not trust the server's certificate
    fails the handshake with a certificate verification error, and the server's driver never
    hears of the connection."""
    sctx, _ = _direct_contexts(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, cctx = _direct_contexts(other)  # trusts another self-signed certificate
    made: list[Recorder] = []

    def factory() -> TLSReader:
        made.append(Recorder())
        return TLSReader(made[-1])

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=sctx)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.wait_for(loop.create_connection(
                Recorder, "127.0.0.1", port, ssl=cctx, server_hostname="localhost"), 10)
        assert all(r.transport is None for r in made)
    finally:
        server.close()


class CountingSSLObject(DirectSSLObject):
    """Counts `SSL_write` calls: each one is a TLS record (or more, past 16 KiB)."""

    writes = 0

    @classmethod
    def _create(cls, *args: Any, **kwargs: Any) -> DirectSSLObject:
        self = super()._create(*args, **kwargs)
        inner_write = self.write

        def write(data: bytes) -> int:
            CountingSSLObject.writes += 1
            return int(inner_write(data))

        self.write = write  # type: ignore[method-assign]
        return self


async def test_a_response_held_in_one_turn_leaves_as_one_tls_record(tmp_path: Path) -> None:
    """`HeldWrites` (ADR 0065) over a real TLS transport: a head and a body written in one turn
    reach OpenSSL as one write, so the peer decrypts one record, not two (ADR 0067)."""
    from tulle.dataplane.turn import HeldWrites, TurnWrites

    sctx, cctx = _direct_contexts(tmp_path)
    sctx.sslobject_class = CountingSSLObject
    loop = asyncio.get_running_loop()
    server, port, made = await _tls_server(sctx, Recorder)
    try:
        client = Recorder()
        transport, _ = await loop.create_connection(lambda: client, "127.0.0.1", port,
                                                    ssl=cctx, server_hostname="localhost")
        rec = await asyncio.wait_for(made.get(), 10)
        assert rec.transport is not None
        w = HeldWrites(TurnWrites(loop))
        w.attach(rec.transport)
        head, body = b"HTTP/1.1 200 OK\r\ncontent-length: 1024\r\n\r\n", b"x" * 1024
        before = CountingSSLObject.writes
        w.write(head)
        w.write(body)
        await client.until(len(head) + len(body))
        assert CountingSSLObject.writes - before == 1
        assert client.received() == head + body
        transport.close()
    finally:
        server.close()
