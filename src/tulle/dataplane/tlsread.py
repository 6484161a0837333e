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
import ssl
import threading

BUFFER_SIZE = 256 * 1024
"""uvloop's own read size for TLS (`SSL_READ_MAX_SIZE`): a larger batch of records than this
waits one loop turn; anonymous memory, so only the pages written become resident."""

_local = threading.local()


class DirectSSLObject(ssl.SSLObject):
    """An `ssl.SSLObject` whose `read`, `write` and `pending` are the C methods themselves.

    `ssl.SSLObject`'s own are Python functions that only pass their arguments on to the C
    object (`self._sslobj.read(len, buffer)`), and the TLS transport calls them for every TLS
    record: `write` once per write, `read` and `pending` twice per read (uvloop's
    `SSLProtocol` takes the bound methods once, at the handshake; asyncio's looks them up per
    call).  Bound here to the instance, each call is one C call instead of an interpreted frame
    around it (ADR 0067).  The C methods take the same positional arguments the transports
    pass (`read(n)` or `read(n, buffer)`, `write(data)`, `pending()`), raise the same errors,
    and everything else (`getpeercert`, `selected_alpn_protocol`, ...) is the class's own.
    Installed as `sslobject_class` of the proxy's contexts (`tulle.dataplane.runtime.tls`)."""

    @classmethod
    def _create(cls, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                server_side: bool = False, server_hostname: str | bytes | None = None,
                session: ssl.SSLSession | None = None,
                context: ssl.SSLContext | None = None) -> DirectSSLObject:
        self: DirectSSLObject = super()._create(  # type: ignore[misc]
            incoming, outgoing, server_side=server_side, server_hostname=server_hostname,
            session=session, context=context)
        c = self._sslobj  # type: ignore[attr-defined]
        self.read = c.read  # type: ignore[method-assign]
        self.write = c.write  # type: ignore[method-assign]
        self.pending = c.pending  # type: ignore[method-assign]
        return self


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

    def eof_received(self) -> bool:
        """The driver hears the peer's close_notify; the answer is always False: a TLS
        transport shuts down after close_notify whatever its protocol answers (uvloop's and
        asyncio's `sslproto`: what is queued is flushed, then the connection closes), so a
        driver's True (an HTTP/1 client half-closed after whole requests) changes nothing, and
        passing it on made the transport log a warning for every such connection."""
        self.app.eof_received()
        return False

    def pause_writing(self) -> None:
        self.app.pause_writing()

    def resume_writing(self) -> None:
        self.app.resume_writing()
