"""A raw HTTP/2 client for hostile tests: frames built by hand, nothing validated on the way out.

`H2Client` (h2peers.py) goes through h2, which refuses to send what an attacker sends (a
`:method` with a space, a stream past the server's concurrency limit, floods in one write).
This one writes frames as given and reads what comes back frame by frame:

    c = await RawH2.connect(port)
    sid = c.headers(request("GET", "/"), end=True)
    await c.wait_stream(sid)          # c.status[sid], c.resets[sid]
    c.write(ping() * 5000)            # then: await c.wait_closed(); c.goaway_code
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

from hpack import Decoder, Encoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH, PING, GOAWAY, WINDOW_UPDATE = range(9)
END_STREAM = 0x1
END_HEADERS = 0x4
ACK = 0x1


def frame(typ: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([typ, flags]) + struct.pack(
        ">I", sid & 0x7FFFFFFF) + payload


def ping(opaque: bytes = b"12345678") -> bytes:
    return frame(PING, 0, 0, opaque)


def settings(ack: bool = False) -> bytes:
    return frame(SETTINGS, ACK if ack else 0, 0)


def window_update(sid: int = 0, increment: int = 1) -> bytes:
    return frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", increment))


def priority(sid: int, depends_on: int = 0) -> bytes:
    return frame(PRIORITY, 0, sid, struct.pack(">IB", depends_on, 15))


def rst(sid: int, code: int = 8) -> bytes:
    return frame(RST_STREAM, 0, sid, struct.pack(">I", code))


def data(sid: int, payload: bytes = b"", end: bool = False) -> bytes:
    return frame(DATA, END_STREAM if end else 0, sid, payload)


def request(method: str = "GET", path: str = "/", authority: str = "example.test",
            extra: list[tuple[bytes, bytes]] | None = None) -> list[tuple[bytes, bytes]]:
    return [(b":method", method.encode()), (b":scheme", b"http"),
            (b":authority", authority.encode()), (b":path", path.encode()), *(extra or [])]


class RawH2(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.buf = b""
        self.next_sid = 1
        self.status: dict[int, int] = {}
        self.fields: dict[int, list[tuple[bytes, bytes]]] = {}
        """Every field of each stream's first header block (the response head), as sent."""
        self.body: dict[int, bytearray] = {}
        self.resets: dict[int, int] = {}
        self.ended: dict[int, asyncio.Event] = {}
        self.goaway_code: int | None = None
        self.goaways: list[int] = []
        """The last stream id of each GOAWAY received, in order."""
        self.closed = asyncio.Event()
        self.read = True
        """False: stop reading (a peer that never reads our answers)."""

    @classmethod
    async def connect(cls, port: int, *, rcvbuf: int = 0) -> RawH2:
        loop = asyncio.get_running_loop()
        sock = None
        if rcvbuf:
            import socket
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            _, c = await loop.create_connection(cls, sock=sock)
        else:
            _, c = await loop.create_connection(cls, "127.0.0.1", port)
        return c

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.write(PREFACE + settings())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.closed.set()
        for ev in self.ended.values():
            ev.set()

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def headers(self, fields: list[tuple[bytes, bytes]], end: bool = True) -> int:
        sid, raw = self.headers_frame(fields, end)
        self.write(raw)
        return sid

    def headers_frame(self, fields: list[tuple[bytes, bytes]],
                      end: bool = True) -> tuple[int, bytes]:
        """The next stream's HEADERS frame, not written (to batch it with other frames)."""
        sid = self.next_sid
        self.next_sid += 2
        self.ended[sid] = asyncio.Event()
        self.body[sid] = bytearray()
        return sid, frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), sid,
                          self.encoder.encode(fields))

    def stop_reading(self) -> None:
        self.read = False
        if self.transport is not None:
            self.transport.pause_reading()

    def data_received(self, chunk: bytes) -> None:
        self.buf += chunk
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + length:
                return
            typ, flags = self.buf[3], self.buf[4]
            sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            payload = self.buf[9:9 + length]
            self.buf = self.buf[9 + length:]
            self._frame(typ, flags, sid, payload)

    def _frame(self, typ: int, flags: int, sid: int, payload: bytes) -> None:
        if typ == SETTINGS and not flags & ACK:
            self.write(settings(ack=True))
        elif typ == HEADERS:
            fields = self.decoder.decode(payload, raw=True)
            self.fields.setdefault(sid, list(fields))
            for n, v in fields:
                if n == b":status":
                    self.status.setdefault(sid, int(v))
            if flags & END_STREAM:
                self._end(sid)
        elif typ == DATA:
            self.body.setdefault(sid, bytearray()).extend(payload)
            if payload:  # keep the windows open
                self.write(window_update(0, len(payload)) + window_update(sid, len(payload)))
            if flags & END_STREAM:
                self._end(sid)
        elif typ == RST_STREAM:
            self.resets[sid] = int.from_bytes(payload[:4], "big")
            self._end(sid)
        elif typ == GOAWAY:
            self.goaway_code = int.from_bytes(payload[4:8], "big")
            self.goaways.append(int.from_bytes(payload[:4], "big") & 0x7FFFFFFF)

    def _end(self, sid: int) -> None:
        ev = self.ended.get(sid)
        if ev is not None:
            ev.set()

    async def wait_stream(self, sid: int, timeout: float = 5) -> None:
        await asyncio.wait_for(self.ended[sid].wait(), timeout)

    async def wait_closed(self, timeout: float = 5) -> None:
        await asyncio.wait_for(self.closed.wait(), timeout)

    def close(self) -> None:
        if self.transport is not None:
            with contextlib.suppress(Exception):
                self.transport.close()
