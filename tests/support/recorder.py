"""A raw HTTP/1.1 origin that records every byte it receives and parses it strictly.

Smuggling and pool-poisoning tests must know exactly what reached the origin, connection by
connection: not what a forgiving server library would make of it, but every byte, and where a
strict parser (llhttp in strict mode, its own instance, not the proxy's) says each request
ends.  The answer to each request is raw bytes from a `Responder`, so a test can make the origin
answer slowly, early (before the request body ended), with odd framing, or not at all:

    async def respond(req: Seen) -> bytes:
        return ok(req.target)

    async with recording_origin(respond) as origin:
        ... origin.port, origin.requests, origin.raw[0], origin.connections ...

Requests are answered strictly in order per connection (as a real HTTP/1.1 server does with a
pipeline), each once the previous answer is written.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field

import httptools


@dataclass
class Seen:
    """One request as the origin's strict parser framed it."""

    conn: int
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""

    def header(self, name: bytes) -> bytes | None:
        for n, v in self.headers:
            if n.lower() == name:
                return v
        return None


Responder = Callable[[Seen], Awaitable[bytes | None]]
"""Raw response bytes for a request; None: send nothing (and keep the connection open)."""


def ok(body: bytes, *extra: bytes) -> bytes:
    """A keep-alive 200 with a Content-Length and the given extra header lines."""
    lines = b"".join(e + b"\r\n" for e in extra)
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%b\r\n%b" % (len(body), lines, body)


async def echo_target(req: Seen) -> bytes:
    return ok(req.target)


@dataclass
class RecordingOrigin:
    port: int = 0
    raw: list[bytearray] = field(default_factory=list)
    """Every byte received, one entry per connection in accept order."""
    requests: list[Seen] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """Parse errors (the connection was closed after each)."""
    closed: list[bool] = field(default_factory=list)
    """Per connection: the proxy closed it (EOF or reset)."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set whenever a request completes or a connection closes."""

    @property
    def connections(self) -> int:
        return len(self.raw)

    async def wait_for(self, what: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not what():
                self.changed.clear()
                await self.changed.wait()

    def on_conn(self, n: int) -> list[Seen]:
        return [r for r in self.requests if r.conn == n]


class _Parser:
    """httptools callbacks collecting whole requests of one connection."""

    def __init__(self, origin: RecordingOrigin, conn: int, out: asyncio.Queue[Seen],
                 early: Collection[bytes]) -> None:
        self.origin = origin
        self.early = early
        self.conn = conn
        self.out = out
        self.parser = httptools.HttpRequestParser(self)
        self.cur: Seen | None = None
        self.url = b""

    def on_message_begin(self) -> None:
        self.cur = Seen(self.conn, b"", b"", [])
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.cur is not None
        self.cur.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.cur is not None
        self.cur.method = self.parser.get_method()
        self.cur.target = self.url
        if self.url in self.early:  # answered now; the body is still recorded as it comes
            self.out.put_nowait(self.cur)

    def on_body(self, body: bytes) -> None:
        assert self.cur is not None
        self.cur.body += body

    def on_message_complete(self) -> None:
        assert self.cur is not None
        self.origin.requests.append(self.cur)
        self.origin.changed.set()
        if self.url not in self.early:
            self.out.put_nowait(self.cur)
        self.cur = None


@contextlib.asynccontextmanager
async def recording_origin(respond: Responder = echo_target, *,
                           early: Collection[bytes] = ()) -> AsyncIterator[RecordingOrigin]:
    """`early`: targets answered as soon as their head is parsed, before their body ends."""
    origin = RecordingOrigin()
    tasks: set[asyncio.Task[None]] = set()

    async def answer(queue: asyncio.Queue[Seen], writer: asyncio.StreamWriter) -> None:
        while True:
            req = await queue.get()
            data = await respond(req)
            if data:
                writer.write(data)
                await writer.drain()

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = len(origin.raw)
        origin.raw.append(bytearray())
        origin.closed.append(False)
        origin.changed.set()
        queue: asyncio.Queue[Seen] = asyncio.Queue()
        parser = _Parser(origin, n, queue, early)
        me = asyncio.current_task()
        if me is not None:
            tasks.add(me)
        responder = asyncio.ensure_future(answer(queue, writer))
        tasks.add(responder)
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                origin.raw[n] += data
                try:
                    parser.parser.feed_data(data)
                except httptools.HttpParserError as exc:
                    origin.errors.append(f"conn {n}: {exc}")
                    break
        except ConnectionError:
            pass
        finally:
            origin.closed[n] = True
            origin.changed.set()
            responder.cancel()
            writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    origin.port = server.sockets[0].getsockname()[1]
    try:
        yield origin
    finally:
        server.close()
        for t in tasks:
            t.cancel()
        await server.wait_closed()
