"""The one dialler: every upstream TCP connection the proxy opens starts here.

Why one place: the connect timeout, name resolution, socket options and (later) mTLS
origination must be the same whoever dials — the TCP relay's two engines today, the HTTP/1 and
HTTP/2 pools next (DESIGN.md section 4: "one dialler for pools and the TCP relay").  A dial that
fails raises `ConnectFailed` saying why in a few words (`timed out`, `connection refused`,
`does not resolve`), which callers count and put in their logs and close records.

Two shapes, because the relay's engines need different things:

* `dial_socket` -> a connected non-blocking `socket.socket` (the splice engine moves bytes
  between file descriptors and never wraps it in a transport).
* `dial_transport` -> an asyncio transport driving `protocol` (the copy engine, TLS upstreams,
  and the HTTP pools once they adopt it), TLS handshake included in the timeout.

mTLS origination is here (ADR 0030): the cluster's client context presents its identity and
verifies the server against its trust bundle during the handshake; then `peer_check` (the
cluster's expected SPIFFE IDs, `security.spiffe.expect`) looks at the verified certificate and a
server that is not one expected for the destination fails the dial like a refused connect
(`ConnectFailed`, so 503 UF with the reason).  The check runs in the first protocol asyncio
drives on the connection (`_PeerGate`), at the end of the handshake and before the caller's
protocol is even made: asyncio calls `connection_made` before `create_connection` returns, and
a driver may write there (the HTTP/2 preface and SETTINGS) or be handed bytes the server sent
with its handshake right after it (the stdlib loop reads at once).  So a refused server is sent
nothing of the application protocol and nothing it sends reaches a driver or, through the TCP
relay, the client; every user of the dialler gets this by dialling through here.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Callable
from typing import Generic, TypeVar

from tulle.dataplane.security.spiffe import PeerCheck
from tulle.proxyconfig.address import numeric_family

P = TypeVar("P", bound=asyncio.BaseProtocol)


class ConnectFailed(OSError):
    """An upstream connection could not be opened; `what` is the short reason."""

    def __init__(self, host: str, port: int, what: str) -> None:
        super().__init__(f"cannot connect to {host}:{port}: {what}")
        self.host = host
        self.port = port
        self.what = what


def _what(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"TLS: server certificate not trusted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"does not resolve ({(exc.strerror or str(exc)).lower()})"
    if isinstance(exc, OSError):
        if exc.errno:  # asyncio's strerror is "Connect call failed (addr)": the errno says why
            return os.strerror(exc.errno).lower()
        return (exc.strerror or str(exc)).lower()
    return str(exc)


def _set_options(sock: socket.socket) -> None:
    """Socket options of every upstream connection: no Nagle delay (a proxy forwards what it
    got at once; batching is the client's business)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _address(loop: asyncio.AbstractEventLoop, host: str,
                   port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    family = numeric_family(host)
    if family is None:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise socket.gaierror(socket.EAI_NONAME, "no address") from None
        family, _, _, _, sa = infos[0]
        return family, (str(sa[0]), int(sa[1]))
    return family, (host, port)


async def _sock_connect(loop: asyncio.AbstractEventLoop, sock: socket.socket,
                        addr: tuple[str, int]) -> None:
    """Connect a non-blocking socket to a numeric address.  Not `loop.sock_connect`: uvloop's
    resolves even a numeric address, through getaddrinfo on the thread pool (and imports
    `encodings.idna` for it) on every dial."""
    try:
        sock.connect(addr)
        return
    except (BlockingIOError, InterruptedError):
        pass
    fd = sock.fileno()
    writable = loop.create_future()

    def ready() -> None:
        if not writable.done():
            writable.set_result(None)

    loop.add_writer(fd, ready)
    try:
        await writable
    finally:
        loop.remove_writer(fd)
    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))


async def _connect_socket(loop: asyncio.AbstractEventLoop, host: str,
                          port: int) -> socket.socket:
    family, addr = await _address(loop, host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        _set_options(sock)
        await _sock_connect(loop, sock, addr)
    except BaseException:
        sock.close()
        raise
    return sock


async def dial_socket(host: str, port: int, timeout: float) -> socket.socket:
    """A connected, non-blocking socket to `host:port` within `timeout` seconds (0: none)."""
    loop = asyncio.get_running_loop()
    try:
        if timeout > 0:
            async with asyncio.timeout(timeout):
                return await _connect_socket(loop, host, port)
        return await _connect_socket(loop, host, port)
    except (OSError, TimeoutError) as exc:
        raise ConnectFailed(host, port, _what(exc)) from exc


class _PeerGate(asyncio.Protocol, Generic[P]):
    """The protocol asyncio drives first on a dialled TLS connection: it judges the server
    before the caller's protocol exists (module docstring).

    At `connection_made` (the handshake is done, the certificate verified) `check` reads the
    server's identity.  Refused: the reason is kept for the dialler and the caller's protocol
    is never made, so nothing of the application protocol is written and nothing read is
    passed on (what the transport still reads lands in this protocol's no-op
    `data_received`, or is discarded by the closing transport itself).  The transport is
    closed at once: that sends what is left of our handshake (our Finished is still in the SSL
    object when `connection_made` runs) and a close_notify, nothing else; the dialler then
    aborts it rather than wait for the server's close_notify.  Accepted, or no check: the
    caller's protocol is made, put in this one's place behind a `TLSReader` (ADR 0063) and
    told `connection_made`, so from then on the gate is out of the path (one object and one
    call per connection, nothing per read or request)."""

    __slots__ = ("app", "check", "factory", "refused")

    def __init__(self, factory: Callable[[], P], check: PeerCheck | None) -> None:
        self.factory = factory
        self.check = check
        self.app: P | None = None
        self.refused: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        check = self.check
        if check is not None:
            refused = check(transport.get_extra_info("ssl_object"))
            if refused is not None:
                self.refused = refused
                transport.close()
                return
        from tulle.dataplane.tlsread import TLSReader  # TLS only (ADR 0068)

        self.app = app = self.factory()
        # Decrypted into a shared buffer (ADR 0063); a buffered protocol reads for itself.
        transport.set_protocol(TLSReader(app) if isinstance(app, asyncio.Protocol) else app)
        app.connection_made(transport)


async def dial_transport(protocol_factory: Callable[[], P], host: str, port: int,
                         timeout: float, *, ssl_context: ssl.SSLContext | None = None,
                         server_name: str | None = None,
                         peer_check: PeerCheck | None = None) -> tuple[asyncio.Transport, P]:
    """A transport to `host:port` driving a protocol from `protocol_factory`, within `timeout`
    seconds (0: none), TLS handshake included when `ssl_context` is set (`server_name`: the
    name the certificate is checked against and sent as SNI; None takes `host`).  With TLS,
    `peer_check` judges the verified server certificate as the handshake ends, before
    `protocol_factory` is called; a refusal aborts the connection and raises `ConnectFailed`
    with its reason, and the protocol is never made."""
    loop = asyncio.get_running_loop()

    async def connect() -> tuple[asyncio.Transport, P]:
        sock = await _connect_socket(loop, host, port)
        if ssl_context is None:
            try:
                return await loop.create_connection(protocol_factory, sock=sock)
            except BaseException:
                sock.close()
                raise
        try:
            transport, gate = await loop.create_connection(
                lambda: _PeerGate(protocol_factory, peer_check), sock=sock, ssl=ssl_context,
                server_hostname=server_name or host)
        except BaseException:
            sock.close()
            raise
        if gate.refused is not None:
            transport.abort()  # closed by the gate: do not wait for the server's close_notify
            raise ConnectFailed(host, port, gate.refused)
        if gate.app is None:  # cannot happen: connection_made precedes create_connection's end
            transport.abort()
            raise ConnectFailed(host, port, "TLS: connection not made")
        return transport, gate.app

    try:
        if timeout > 0:
            async with asyncio.timeout(timeout):
                return await connect()
        return await connect()
    except ConnectFailed:
        raise
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise ConnectFailed(host, port, _what(exc)) from exc
