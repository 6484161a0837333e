"""A controllable HTTP/1.1 origin for resilience tests: answers 200 unless told to fail.

`script` is consumed one entry per request: `"ok"`, `"503"` (or any status), `"reset"` (close
the connection after reading the request, no response), `"hang"` (read the request, answer
nothing until the test ends), `"drip"` (a chunked 200 of 8 chunks, 60 ms apart),
`"503-close"` (a 503 with `Connection: close`, then close), `"503-big"` (a 503 whose 256 KiB
body takes several reads), `"503-stall"` (a 503 head and 10 of its 1,000 body bytes, then
nothing), `"503-junk"` (a 503 and, in the same write, a response nobody asked for).  When
the script is empty, `default` applies.  Every request is recorded (method, path, body) so a
test can count tries and check replayed bodies; `connections` counts the connections accepted
(does the proxy reuse its upstream connections?).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class Seen:
    method: bytes
    path: bytes
    body: bytes


@dataclass
class FlakyOrigin:
    script: list[str] = field(default_factory=list)
    default: str = "ok"
    name: bytes = b"origin"
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    connections: int = 0
    _hung: list[asyncio.StreamWriter] = field(default_factory=list)

    def next_action(self) -> str:
        return self.script.pop(0) if self.script else self.default

    async def handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await r.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.split(b"\r\n")
                method, path, _ = lines[0].split(b" ", 2)
                length = 0
                chunked = False
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
                    elif name.strip().lower() == b"transfer-encoding":
                        chunked = b"chunked" in value.lower()
                body = await self._body(r, length, chunked)
                self.seen.append(Seen(method, path, body))
                action = self.next_action()
                if action == "reset":
                    w.transport.abort()
                    return
                if action == "hang":
                    self._hung.append(w)
                    return
                if action == "drip":
                    w.write(b"HTTP/1.1 200 X\r\nTransfer-Encoding: chunked\r\n\r\n")
                    for _ in range(8):
                        await asyncio.sleep(0.06)  # the origin's pace, not a wait for a result
                        w.write(b"1\r\n.\r\n")
                    w.write(b"0\r\n\r\n")
                    await w.drain()
                    continue
                if action == "503-close":
                    w.write(b"HTTP/1.1 503 X\r\nConnection: close\r\nContent-Length: 5\r\n\r\nbusy\n")
                    await w.drain()
                    w.close()
                    return
                if action == "503-stall":  # a head and 10 of 1,000 body bytes, then nothing
                    w.write(b"HTTP/1.1 503 X\r\nContent-Length: 1000\r\n\r\n" + b"s" * 10)
                    self._hung.append(w)
                    return
                if action == "503-junk":  # a whole 503, then bytes no request asked for
                    w.write(b"HTTP/1.1 503 X\r\nContent-Length: 5\r\n\r\nbusy\n"
                            b"HTTP/1.1 200 X\r\nContent-Length: 5\r\n\r\nfake\n")
                    await w.drain()
                    continue
                if action == "503-big":
                    big = b"b" * (256 * 1024)
                    w.write(b"HTTP/1.1 503 X\r\nContent-Length: %d\r\n\r\n" % len(big))
                    for i in range(0, len(big), 16 * 1024):
                        w.write(big[i:i + 16 * 1024])
                        await w.drain()
                        await asyncio.sleep(0)  # the body spans reads
                    continue
                status = 200 if action == "ok" else int(action)
                payload = self.name + b"\n"
                w.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%b"
                        % (status, len(payload), payload))
                await w.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return

    @staticmethod
    async def _body(r: asyncio.StreamReader, length: int, chunked: bool) -> bytes:
        if not chunked:
            return await r.readexactly(length) if length else b""
        out = b""
        while True:
            size = int((await r.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await r.readuntil(b"\r\n")
                return out
            out += await r.readexactly(size)
            await r.readexactly(2)


@contextlib.asynccontextmanager
async def flaky_origin(script: list[str] | None = None, default: str = "ok",
                       name: bytes = b"origin") -> AsyncIterator[FlakyOrigin]:
    origin = FlakyOrigin(list(script or []), default, name)
    server = await asyncio.start_server(origin.handle, "127.0.0.1", 0)
    origin.port = server.sockets[0].getsockname()[1]
    try:
        yield origin
    finally:
        for w in origin._hung:
            w.transport.abort()
        server.close()
        await server.wait_closed()


def refused_port() -> int:
    """A loopback port nothing listens on (bound then closed: connect is refused)."""
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port
