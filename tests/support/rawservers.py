"""Raw TCP peers for HTTP/1 tests: upstreams that misbehave on purpose, and a raw client reader.

Real servers (aiohttp) are too well-behaved to send half a response and reset, answer with
garbage, or close a keep-alive connection just as it is reused.  These do exactly one such
thing each, on loopback, port 0:

    async with raw_server(half_then_reset) as srv:
        ... srv.port, srv.connections ...

`read_response` parses one HTTP/1.1 response off a `StreamReader` the way a strict client would
(1xx heads collected, chunked bodies and trailers decoded, close-delimited bodies read to EOF),
so tests can assert on framing, not just on what a forgiving client library shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field


@dataclass
class RawServer:
    port: int
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    """Every request head (and, for handlers that read one, body) the server received."""


def rst(writer: asyncio.StreamWriter) -> None:
    """Close with SO_LINGER 0: the peer sees a TCP RST, not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


Handler = Callable[[RawServer, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[RawServer]:
    state = RawServer(0)
    tasks: set[asyncio.Task[None]] = set()

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        task = asyncio.current_task()
        if task is not None:
            tasks.add(task)
        try:
            await handler(state, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        for t in tasks:
            t.cancel()
        await server.wait_closed()


async def _head(srv: RawServer, reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    srv.requests.append(head)
    return head


# -- misbehaving upstreams ---------------------------------------------------------------

async def half_then_reset(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """A head promising 100000 bytes, 1000 of them, then a reset."""
    await _head(srv, r)
    w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n" + b"x" * 1000)
    await w.drain()
    await asyncio.sleep(0.05)  # let the proxy forward the head before the RST overtakes it
    rst(w)


async def reset_before_head(srv: RawServer, r: asyncio.StreamReader,
                            w: asyncio.StreamWriter) -> None:
    await _head(srv, r)
    rst(w)


async def garbage(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    await _head(srv, r)
    w.write(b"SPAM SPAM SPAM\r\n\r\n")
    await w.drain()


async def close_delimited(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """No Content-Length, no chunking: the body ends when the connection closes (FIN)."""
    await _head(srv, r)
    w.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n")
    for part in (b"until-", b"the-", b"close"):
        w.write(part)
        await w.drain()
    w.write_eof()


async def close_delimited_then_reset(srv: RawServer, r: asyncio.StreamReader,
                                     w: asyncio.StreamWriter) -> None:
    """A close-delimited body cut by a reset: truncated, not complete."""
    await _head(srv, r)
    w.write(b"HTTP/1.1 200 OK\r\n\r\npartial")
    await w.drain()
    await asyncio.sleep(0.05)
    rst(w)


async def chunked_with_trailers(srv: RawServer, r: asyncio.StreamReader,
                                w: asyncio.StreamWriter) -> None:
    await _head(srv, r)
    w.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: abc123\r\n\r\n")
    await w.drain()
    await r.read()  # keep-alive: wait for the proxy to close


async def echo_chunked_raw(srv: RawServer, r: asyncio.StreamReader,
                           w: asyncio.StreamWriter) -> None:
    """Read a chunked request and answer with its raw body bytes (chunks and trailers)."""
    head = await _head(srv, r)
    assert b"transfer-encoding: chunked" in head.lower()
    body = await r.readuntil(b"\r\n0\r\n")
    body += await r.readuntil(b"\r\n\r\n") if not body.endswith(b"\r\n\r\n") else b""
    srv.requests.append(body)
    w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body))
    await w.drain()
    await r.read()


async def one_request_per_connection(srv: RawServer, r: asyncio.StreamReader,
                                     w: asyncio.StreamWriter) -> None:
    """Answer the first request with keep-alive, then close as the next one arrives: the race
    of a server's idle timeout firing just as the proxy reuses the connection."""
    await _head(srv, r)
    w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    await w.drain()
    await _head(srv, r)


async def head_with_length(srv: RawServer, r: asyncio.StreamReader,
                           w: asyncio.StreamWriter) -> None:
    """Answers HEAD with a Content-Length and no body, then GET normally, on one connection."""
    while True:
        head = await _head(srv, r)
        if head.startswith(b"HEAD"):
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 12345\r\n\r\n")
        else:
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nget")
        await w.drain()


async def extra_bytes_after_response(srv: RawServer, r: asyncio.StreamReader,
                                     w: asyncio.StreamWriter) -> None:
    """A complete response followed by a second, unsolicited one (response smuggling)."""
    await _head(srv, r)
    w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst"
            b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled")
    await w.drain()
    await r.read()


async def switching_without_upgrade(srv: RawServer, r: asyncio.StreamReader,
                                    w: asyncio.StreamWriter) -> None:
    await _head(srv, r)
    w.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n")
    await w.drain()
    await r.read()


# -- a strict raw client -----------------------------------------------------------------

@dataclass
class RawResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    informational: list[int] = field(default_factory=list)
    version: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n == name:
                return v
        return None

    def has(self, name: bytes) -> bool:
        return any(n == name for n, _ in self.headers)


def _fields(block: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for line in block.split(b"\r\n"):
        if line:
            n, _, v = line.partition(b":")
            out.append((n.strip().lower(), v.strip()))
    return out


async def read_response(reader: asyncio.StreamReader, *, head_request: bool = False
                        ) -> RawResponse:
    informational: list[int] = []
    while True:
        raw = await reader.readuntil(b"\r\n\r\n")
        status_line, _, rest = raw[:-4].partition(b"\r\n")
        version, status_s, _ = status_line.split(b" ", 2)
        status = int(status_s)
        headers = _fields(rest)
        if 100 <= status < 200 and status != 101:
            informational.append(status)
            continue
        break
    resp = RawResponse(status, headers, b"", informational=informational, version=version)
    te = resp.header(b"transfer-encoding")
    cl = resp.header(b"content-length")
    if head_request or status in (101, 204, 304):
        return resp
    if te is not None:
        assert te.lower() == b"chunked", te
        body = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body += await reader.readexactly(size)
            assert await reader.readexactly(2) == b"\r\n"
        trailer_block = bytearray()
        while True:
            line = await reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            trailer_block += line
        resp.body = bytes(body)
        resp.trailers = _fields(bytes(trailer_block))
    elif cl is not None:
        resp.body = await reader.readexactly(int(cl))
    else:
        resp.body = await reader.read()
    return resp


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    """True when the peer closed (EOF or reset) with nothing more to read."""
    try:
        return await reader.read(1) == b""
    except ConnectionError:
        return True


async def read_response_within(reader: asyncio.StreamReader, seconds: float = 3.0) -> RawResponse:
    """`read_response`, bounded: a proxy that never answers fails the test instead of hanging."""
    return await asyncio.wait_for(read_response(reader), seconds)


async def cut_off(reader: asyncio.StreamReader, seconds: float = 3.0) -> bool:
    """Read (bounded) until the peer closes; True when it did (EOF or reset)."""
    async with asyncio.timeout(seconds):
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
    return True


def named_origin(name: bytes) -> Handler:
    """Keep-alive HTTP/1.1: records each request head and answers 200 with `name` as the body, so
    a test sees which origin a request reached."""
    async def handler(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            srv.requests.append(head)
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(name), name))
            await w.drain()

    return handler


async def answer_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A keep-alive origin for `asyncio.start_server`: `200 ok` to every request head, no
    more; for tests whose subject is the proxy in front of it."""
    try:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


class EchoUpgrader:
    """An origin that answers the first request `101 Switching Protocols` (upgrade: foo), then
    echoes every chunk it reads as `echo:<chunk>`, recording the chunks (`saw`) and setting
    `closed` when the client's side ends."""

    def __init__(self) -> None:
        self.saw: list[bytes] = []
        self.closed = asyncio.Event()

    async def __call__(self, srv: RawServer, r: asyncio.StreamReader,
                       w: asyncio.StreamWriter) -> None:
        srv.requests.append(await r.readuntil(b"\r\n\r\n"))
        w.write(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: foo\r\n\r\n")
        await w.drain()
        with contextlib.suppress(ConnectionError):
            while chunk := await r.read(100):
                self.saw.append(chunk)
                w.write(b"echo:" + chunk)
        self.closed.set()
