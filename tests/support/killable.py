"""Upstreams a resilience test can break: a minimal keep-alive HTTP/1.1 origin on loopback
that answers every request 200 (or the status set for its path) and can be killed (listener
closed, every connection aborted: new connections are refused) or brought back on its port.
Also a load driver: keep-alive clients sending GETs through a proxy, counting statuses."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

from tests.support.rawservers import read_response


class _Conn(asyncio.Protocol):
    def __init__(self, origin: KillableOrigin) -> None:
        self.origin = origin
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.origin.conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.origin.conns.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        assert self.transport is not None
        while b"\r\n\r\n" in self.buf:  # GETs only: no bodies
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            status = self.origin.statuses.get(path, 200)
            self.origin.served += 1
            self.transport.write(b"HTTP/1.1 %d X\r\ncontent-length: 2\r\n\r\nok" % status)


class KillableOrigin:
    def __init__(self) -> None:
        self.conns: set[_Conn] = set()
        self.statuses: dict[str, int] = {}
        self.served = 0
        self.port = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    def kill(self) -> None:
        """Die without a word: nothing listens on the port any more, open connections reset."""
        if self.server is not None:
            self.server.close()
            self.server = None
        for c in list(self.conns):
            if c.transport is not None:
                c.transport.abort()


@contextlib.asynccontextmanager
async def killable_origins(n: int) -> AsyncIterator[list[KillableOrigin]]:
    origins = [KillableOrigin() for _ in range(n)]
    for o in origins:
        await o.start()
    try:
        yield origins
    finally:
        for o in origins:
            o.kill()


async def drive(port: int, total: int, concurrency: int,
                on_response: Callable[[int], None] | None = None) -> Counter[int]:
    """Send `total` GETs through the proxy on `concurrency` keep-alive connections; the count
    of each status (0: the connection failed).  `on_response(n)` after each of them."""
    statuses: Counter[int] = Counter()
    sent = 0

    async def client() -> None:
        nonlocal sent
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            while sent < total:
                sent += 1
                w.write(b"GET /work HTTP/1.1\r\nHost: backend\r\n\r\n")
                try:
                    resp = await asyncio.wait_for(read_response(r), 5.0)
                    statuses[resp.status] += 1
                except (ConnectionError, asyncio.IncompleteReadError):
                    statuses[0] += 1
                    w.close()
                    r, w = await asyncio.open_connection("127.0.0.1", port)
                if on_response is not None:
                    on_response(sum(statuses.values()))
        finally:
            w.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return statuses


def now() -> float:
    return time.monotonic()
