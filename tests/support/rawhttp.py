"""A bare HTTP/1.1 client on one TCP connection, for tests that care *which* connection.

aiohttp and friends hide reconnects; lifecycle tests must prove that a request went over the
same keep-alive connection as the one before a config swap, or that the proxy closed an idle
connection during a drain.  So: one socket, requests written by hand, responses parsed just
enough (content-length, chunked, close-delimited).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


class RawClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._methods: list[str] = []

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> RawClient:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    def send(self, method: str, path: str, headers: dict[str, str] | None = None) -> None:
        """Write a request (no body) without waiting for the answer."""
        lines = [f"{method} {path} HTTP/1.1", "host: test.local"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        self._methods.append(method)

    async def response(self, timeout: float = 10.0) -> RawResponse:
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    k, _, v = line.partition(":")
                    headers[k.strip().lower()] = v.strip()
            method = self._methods.pop(0) if self._methods else "GET"
            if method == "HEAD":
                body = b""
            elif "content-length" in headers:
                body = await self.reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                body = b""
                while True:
                    size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        await self.reader.readuntil(b"\r\n")  # no trailers expected
                        break
                    body += await self.reader.readexactly(size)
                    await self.reader.readexactly(2)
            elif status in (204, 304) or 100 <= status < 200:
                body = b""
            else:
                body = await self.reader.read()
        return RawResponse(status, headers, body)

    async def request(self, method: str, path: str, headers: dict[str, str] | None = None,
                      timeout: float = 10.0) -> RawResponse:
        self.send(method, path, headers)
        return await self.response(timeout)

    async def closed_by_peer(self, timeout: float = 10.0) -> bool:
        """True when the peer closes (EOF or reset) within `timeout` without sending bytes."""
        async with asyncio.timeout(timeout):
            try:
                data = await self.reader.read(1)
            except ConnectionError:
                return True
        return data == b""

    def close(self) -> None:
        self.writer.close()
