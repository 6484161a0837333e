"""The floor a Python HTTP/1.1 proxy can reach here: a minimal uvloop + httptools relay.

    .venv/bin/python -m bench.relay --port P --origin-port O

Issue 13 asks for this as a row of its own: the least work any proxy written in Python on
uvloop has to do for one keep-alive request, so that Tulle's figures can be read against what
the language and the event loop cost rather than against HAProxy alone.  Per downstream
connection it opens one upstream connection; each request head is parsed by httptools,
re-serialised (method, target, headers as received) and written upstream with its body, and
each response head is parsed and re-serialised the same way on the way back, with its body
framed by Content-Length or chunks as the origin sent it.  It does what a proxy must do to
forward a message (parse both directions, frame bodies) and nothing a mesh adds: no routing,
no pooling across connections, no header checks, no timeouts, no pipelining, no error
answers (a broken upstream closes the downstream).  Never used for anything but benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    """The origin side of one relayed connection: parses responses, writes them downstream."""

    def __init__(self, down: asyncio.Transport) -> None:
        self.down = down
        self.parser = httptools.HttpResponseParser(self)
        self.head: list[bytes] = []
        self.chunked = False
        self.out: list[bytes] = []  # what one read produced: one write per read
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.down.close()
            return
        if self.out:
            self.down.write(b"".join(self.out))
            self.out.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self.down.close()

    def on_message_begin(self) -> None:
        self.head = []
        self.chunked = False

    def on_status(self, status: bytes) -> None:
        self.head.append(b"HTTP/1.1 %d %s\r\n" % (self.parser.get_status_code(), status))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head.append(b"%s: %s\r\n" % (name, value))
        if name.lower() == b"transfer-encoding":
            self.chunked = True

    def on_headers_complete(self) -> None:
        self.head.append(b"\r\n")
        self.out.extend(self.head)

    def on_body(self, body: bytes) -> None:
        self.out.append(b"%x\r\n%s\r\n" % (len(body), body) if self.chunked else body)

    def on_message_complete(self) -> None:
        if self.chunked:
            self.out.append(b"0\r\n\r\n")


class Downstream(asyncio.Protocol):
    """The client side: parses requests and writes them to this connection's upstream."""

    def __init__(self, origin: tuple[str, int]) -> None:
        self.origin = origin
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.up: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # written upstream once per read (or on connect)
        self.head: list[bytes] = []
        self.url = b""
        self.chunked = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        try:
            up, _ = await loop.create_connection(lambda: Upstream(self.transport),  # type: ignore[arg-type]
                                                 *self.origin)
        except OSError:
            self.transport.close()
            return
        self.up = up
        if self.pending:
            up.write(b"".join(self.pending))
            self.pending.clear()

    def send(self, data: bytes) -> None:
        self.pending.append(data)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.close()
            return
        if self.up is not None and self.pending:
            self.up.write(b"".join(self.pending))
            self.pending.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.up is not None:
            self.up.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.head = []
        self.chunked = False

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head.append(b"%s: %s\r\n" % (name, value))
        if name.lower() == b"transfer-encoding":
            self.chunked = True

    def on_headers_complete(self) -> None:
        self.send(b"%s %s HTTP/1.1\r\n%s\r\n" % (self.parser.get_method(), self.url,
                                                 b"".join(self.head)))

    def on_body(self, body: bytes) -> None:
        self.send(b"%x\r\n%s\r\n" % (len(body), body) if self.chunked else body)

    def on_message_complete(self) -> None:
        if self.chunked:
            self.send(b"0\r\n\r\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--origin-port", type=int, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    args = ap.parse_args(argv)

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Downstream((args.host, args.origin_port)),
                                          args.host, args.port, backlog=1024)
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
