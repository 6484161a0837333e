"""Accepting TLS stream connections so that the caps apply *before* the handshake.

Why not `asyncio.start_server(ssl=...)`: its callback runs only after the handshake, so the
stream's caps (`limits.py`) could not refuse a flood of connections that never finish one.  And
why not `StreamWriter.start_tls()` from a plaintext server: under uvloop the ClientHello is
read into the plaintext reader before the upgrade and the handshake hangs (seen on this
machine).  So the listener accepts raw sockets itself; the server checks its caps on the raw
socket (refusing with an RST, nothing read) and only then hands it to TLS with
`connect_accepted_socket`, bounded by the hello timeout.

Writing big frames over TLS (`write_paced`): the TLS transport encrypts whatever it is given
and hands it all to the TCP transport below, so its own buffer is empty again at once and
`drain()` returns while the whole encrypted snapshot still waits in the TCP transport.  A push
slot (`max_inflight_pushes`) would then be released with the frame still in memory: measured
at 2,000 simulated proxies, peak RSS 2.7 GB instead of 192 MB.  Written in chunks with a
`drain()` after each, the TCP transport's high-water mark pauses the TLS layer, the TLS
transport's own mark (`TLS_WRITE_HIGH`; uvloop's default is 512 KiB) pauses the writer,
`drain()` waits again, and a slot holds at most a chunk or two until the frame has left.

A proxy that takes nothing of a chunk for the stall timeout (its kernel buffers are full and it
does not read) gets `PushStalled`, never the rest of its frame at once: written whole into a
transport that cannot send it, the rest stayed in memory, encrypted, until the liveness timeout
ended the stream (ADR 0109: 70 such subscribers at 3,500 Services took the control plane from
203 to 676 MB).  The caller ends that stream (ADR 0118).  A slow proxy that keeps taking
chunks is never cut: the timeout is on progress, not on the whole frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import struct
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger("tulle.controlplane.push")

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
OnSocket = Callable[[socket.socket, str], Coroutine[Any, Any, None]]
TLS_WRITE_HIGH = 64 * 1024
"""Bytes of TLS output waiting (encrypted, or not yet) above which a stream's writer pauses."""
ACCEPT_ERROR_PAUSE = 0.1
"""Seconds to wait after accept() fails (EMFILE: no descriptor left) before trying again."""


def peer_of(addr: Any) -> str:
    return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else "?"


def abort_socket(sock: socket.socket) -> None:
    """Close with an RST: nothing buffered, nothing read."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def handshake(sock: socket.socket, ctx: ssl.SSLContext, timeout: float) -> Stream:
    """The server side of TLS on an accepted socket, as a reader/writer pair; SSLError,
    OSError, TimeoutError (not completed within `timeout`), or ConnectionError (the peer went
    away: a port probe)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    protocol = asyncio.StreamReaderProtocol(reader)
    # Our own deadline: the loop's handshake timeout raises ConnectionAbortedError, which
    # would read as the peer going away.
    async with asyncio.timeout(timeout):
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, sock, ssl=ctx, ssl_handshake_timeout=timeout + 5)
    # uvloop's TLS transport pauses its writer only at 512 KiB of encrypted output waiting
    # (the TCP transport's mark is 64 KiB): `write_paced` would not wait, nor notice a proxy
    # that reads nothing, until half a megabyte per stream sat in memory.
    transport.set_write_buffer_limits(high=TLS_WRITE_HIGH)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


class TlsListener:
    """A listening socket whose connections go to `on_socket(sock, peer)`, each in a task."""

    def __init__(self, on_socket: OnSocket) -> None:
        self.on_socket = on_socket
        self._sock: socket.socket | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int, sock: socket.socket | None = None) -> int:
        """Bind `host:port`, or serve `sock`, a socket already listening (handed over by
        the process that made it, e.g. inside another network namespace)."""
        loop = asyncio.get_running_loop()
        if sock is None:
            infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_PASSIVE)
            family = infos[0][0]
            sock = socket.create_server(infos[0][4][:2], family=family, backlog=1024)
        sock.setblocking(False)
        self._sock = sock
        self._loop_task = loop.create_task(self._accept_loop(sock))
        return int(sock.getsockname()[1])

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(sock)
            except OSError as exc:
                log.warning("proxy stream: accept failed: %s", exc)
                await asyncio.sleep(ACCEPT_ERROR_PAUSE)
                continue
            conn.setblocking(False)
            with contextlib.suppress(OSError):  # as start_server does: small frames go now
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(self.on_socket(conn, peer_of(addr)))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop accepting (the connections' tasks are the server's to end)."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._sock is not None:
            self._sock.close()


WRITE_CHUNK = 64 * 1024
"""Bytes handed to the TLS transport before waiting for them to drain."""


class PushStalled(Exception):
    """The proxy took nothing of a frame for the stall timeout: `unsent` of its `size` bytes
    (from the chunk that did not drain on) did not leave."""

    def __init__(self, unsent: int, size: int, stall: float) -> None:
        super().__init__(f"took nothing of a {size}-byte frame for {stall:g}s "
                         f"({unsent} bytes not sent)")
        self.unsent = unsent
        self.size = size
        self.stall = stall


async def write_paced(writer: asyncio.StreamWriter, frame: list[bytes] | tuple[bytes, ...],
                      stall: float) -> None:
    """Write `frame` (its pieces in order) in chunks, draining after each; PushStalled when a
    chunk has not drained within `stall` seconds (the rest is not written)."""
    pieces = [memoryview(p) for p in frame]
    size = sum(map(len, pieces))
    left = size
    i = 0
    while i < len(pieces):
        chunk: list[memoryview] = []
        taken = 0
        while i < len(pieces) and taken < WRITE_CHUNK:
            p = pieces[i]
            take = p[:WRITE_CHUNK - taken]
            chunk.append(take)
            taken += len(take)
            if len(take) == len(p):
                i += 1
            else:
                pieces[i] = p[len(take):]
        writer.writelines(chunk)
        left -= taken
        try:
            async with asyncio.timeout(stall):
                await writer.drain()
        except TimeoutError:
            raise PushStalled(left + taken, size, stall) from None
