"""Decrypted TLS bytes read into one shared buffer instead of a fresh 256 KiB block per read.

Why (ADR 0063): uvloop's TLS transport gives a plain `asyncio.Protocol` its data by calling
`SSLObject.read(256 KiB)` (`uvloop/sslproto.pyx`, `_do_read__copied`): CPython allocates a
256 KiB `bytes`, OpenSSL fills ~1 KiB of it, and it is shrunk.  glibc serves that block with
`mmap` above its mmap threshold and shrinks it with `mremap`; freeing it is a `munmap` with a
TLB flush.  Measured under 1,000 req/s of mesh mTLS, one proxy paid those three system calls
and a page fault on every request (whether a process pays depends on its allocation history:
glibc raises the threshold only after freeing a large block whole).  For an
`asyncio.BufferedProtocol` uvloop instead decrypts into the protocol's own buffer
(`_do_read__buffered`), with no allocation of its own.

`TLSReader` is that buffered protocol in front of a driver (the HTTP/1 and HTTP/2 drivers of a
TLS listener, a dialled TLS connection, the TCP relay's TLS side).  The buffer is shared by the
connections of one thread (one event loop): the loop fills it and calls `buffer_updated` back to
back, and `buffer_updated` copies the bytes out before the driver sees them, so no later read
can overwrite bytes still in use.  Not across threads: OpenSSL decrypts with the GIL released,
so two threads' loops could write into one buffer at once.  The driver keeps seeing
`data_received(bytes)` and keeps calling the transport it was given; a driver that hands the
transport to another protocol (`set_protocol`) replaces the reader, which then hears nothing.
"""

from __future__ import annotations

import asyncio
import mmap
import threading

BUFFER_SIZE = 256 * 1024
"""uvloop's own read size for TLS (`SSL_READ_MAX_SIZE`): a larger batch of records than this
waits one loop turn; anonymous memory, so only the pages written become resident."""

_local = threading.local()


def shared_buffer() -> mmap.mmap:
    """This thread's buffer (made at its first TLS connection)."""
    buf: mmap.mmap | None = getattr(_local, "buffer", None)
    if buf is None:
        buf = _local.buffer = mmap.mmap(-1, BUFFER_SIZE)
    return buf


class TLSReader(asyncio.BufferedProtocol):
    """Put in front of `app` with `tls_transport.set_protocol(TLSReader(app))`."""

    __slots__ = ("app", "buf", "view")

    def __init__(self, app: asyncio.Protocol) -> None:
        self.app = app
        self.buf = shared_buffer()
        self.view = memoryview(self.buf)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        self.app.data_received(self.buf[:nbytes])

    def data_received(self, data: bytes) -> None:
        self.app.data_received(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.app.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.app.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self.app.eof_received()

    def pause_writing(self) -> None:
        self.app.pause_writing()

    def resume_writing(self) -> None:
        self.app.resume_writing()
