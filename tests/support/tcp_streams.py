"""An opaque TCP application and a client holding a stream open through a proxy, for the
tests of what a config change does to open streams (ADRs 0108, 0117).

    async with recording_echo() as app:
        s = await HeldStream.open(proxy_port, "127.0.0.2")
        assert await s.echoes(b"hello")
        ... app.received: every byte each connection brought the application, in accept order
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


@dataclass
class RecordingEcho:
    """The application: echoes, and keeps every byte each connection brought, in accept order."""

    port: int = 0
    received: list[bytearray] = field(default_factory=list)


@contextlib.asynccontextmanager
async def recording_echo() -> AsyncIterator[RecordingEcho]:
    app = RecordingEcho()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        got = bytearray()
        app.received.append(got)
        with contextlib.suppress(ConnectionError):
            while data := await r.read(65536):
                got += data
                w.write(data)
                await w.drain()
        w.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    app.port = int(server.sockets[0].getsockname()[1])
    try:
        yield app
    finally:
        server.close()


class HeldStream:
    """A raw TCP client holding one connection open through a proxy, from a chosen source."""

    def __init__(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self.r, self.w = r, w

    @classmethod
    async def open(cls, port: int, source: str) -> HeldStream:
        r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        return cls(r, w)

    async def echoes(self, data: bytes) -> bool:
        self.w.write(data)
        await self.w.drain()
        return await asyncio.wait_for(self.r.readexactly(len(data)), 5) == data

    async def cut_within(self, seconds: float) -> bool:
        """Whether the proxy closes the connection (EOF or reset) within `seconds`, reading
        whatever it still relays meanwhile."""
        try:
            async with asyncio.timeout(seconds):
                while await self.r.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        return True

    async def write_after(self, data: bytes) -> None:
        """Write once the proxy closed: after a FIN the kernel still takes the bytes (and the
        proxy's side answers RST), after a reset the transport is gone; none of them may reach
        the application."""
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            self.w.write(data)
            await self.w.drain()

    def close(self) -> None:
        self.w.close()
