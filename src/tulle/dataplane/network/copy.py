"""The asyncio engine of the TCP proxy: for TLS on either side, or where `os.splice` is missing.

Two asyncio Protocols, one per socket, write what one reads into the other; the other side's
write buffer drives pause/resume reading (`buffer_high_water_bytes`).  Bytes the client sends
before the upstream connection is up are held (reading paused) and written once it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, cast

from tulle.dataplane.network.filter import ConnectionFacts
from tulle.dataplane.network.tcp_proxy import LINGER_RESET, Target, TcpProxy, transport_facts
from tulle.dataplane.tlsread import TLSReader
from tulle.dataplane.upstream.connect import ConnectFailed, dial_transport

if TYPE_CHECKING:
    from tulle.dataplane.listeners.handle import ListenerHandle
    from tulle.dataplane.network.chain import ConnectionChain
    from tulle.dataplane.telemetry.metrics import CounterChild


class _Side(asyncio.Protocol):
    """One socket of a copy relay; what it reads goes to its peer side."""

    __slots__ = ("counter", "eof", "moved", "peer", "relay", "transport", "wire")

    def __init__(self, relay: CopyRelay, counter: CounterChild, wire: CounterChild) -> None:
        self.relay = relay
        self.counter = counter
        self.wire = wire
        self.moved = 0
        """Bytes read on this side and written to the peer (the close record's count)."""
        self.peer: _Side | None = None
        self.transport: asyncio.Transport | None = None
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        relay.last_active = relay.loop.time()
        peer = self.peer
        if peer is not None and peer.transport is not None and (
                relay.flowing or self is not relay.down):  # (the upstream's bytes: never held)
            n = len(data)
            self.moved += n
            self.counter.value += n
            self.wire.value += n
            peer.transport.write(data)
        else:  # the client spoke before the upstream connection is up
            self.relay.early(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None:
            if peer.transport.can_write_eof():
                peer.transport.write_eof()
            else:
                peer.transport.close()  # TLS: close_notify is the only EOF it has
        if peer is not None and peer.eof:
            self.relay.set_reason("eof")
            self.relay.close()
        # Keep the socket half-open for the other direction; a TLS transport cannot (asyncio
        # closes it whatever we answer, and warns at each connection when we answer True).
        t = self.transport
        return t is None or t.get_extra_info("ssl_object") is None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if exc is not None:
            self.relay.set_reason("reset")
            self.relay.abort()
        else:
            self.relay.set_reason("eof")
            self.relay.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class CopyRelay(TcpProxy):
    """Relay through asyncio transports (TLS, or where splice is unavailable)."""

    def __init__(self, handle: ListenerHandle, target: Target,
                 chain: ConnectionChain | None = None) -> None:
        super().__init__(handle, target, chain)
        ctx = self.ctx
        self.down = _Side(self, self.m_received, ctx.m_bytes_received)
        self.up = _Side(self, self.m_sent, ctx.m_bytes_sent)
        self.down.peer, self.up.peer = self.up, self.down
        self._early: list[bytes] = []
        self.flowing = False
        """The early bytes went upstream: from now on the client's side writes what it reads.
        Not before, even once the upstream transport exists: the client's side is paused until
        then, but a transport that reads while paused (CPython 3.11.0-3.11.2's selector
        transport re-registers its reader at the first call to `_add_reader`) would have its
        bytes written ahead of the early ones."""

    def start(self, transport: asyncio.Transport, initial: bytes) -> None:
        transport.pause_reading()
        if initial:
            self._early.append(initial)
        tls = transport.get_extra_info("ssl_object") is not None  # ADR 0063
        transport.set_protocol(TLSReader(self.down) if tls else self.down)
        self.down.connection_made(transport)
        transport.set_write_buffer_limits(high=self.ctx.high_water)
        self._task = self.loop.create_task(self._run())

    def bytes_moved(self) -> tuple[int, int]:
        return self.down.moved, self.up.moved

    async def _run(self) -> None:
        if not await self.admitted():
            self.abort()
            return
        dest = self.destination()
        if dest is None:
            self.connect_failed()
            self.close()
            return
        host, port, timeout = dest
        cluster = self.target.cluster
        ssl_ctx = cluster.ssl_context if cluster is not None else None
        sni = (cluster.sni or None) if cluster is not None else None
        check = cluster.peer_check if cluster is not None else None
        try:
            transport, _ = await dial_transport(lambda: self.up, host, port, timeout,
                                                ssl_context=ssl_ctx, server_name=sni,
                                                peer_check=check)
        except ConnectFailed:
            self.connect_failed()
            self.close()
            return
        self._task = None
        if self.ended:
            transport.abort()
            return
        self.connected()
        transport.set_write_buffer_limits(high=self.ctx.high_water)
        early, self._early = self._early, []
        down = self.down
        for chunk in early:
            n = len(chunk)
            down.moved += n
            down.counter.value += n
            down.wire.value += n
            transport.write(chunk)
        self.flowing = True
        if down.eof:
            transport.write_eof()
        if down.transport is not None:
            down.transport.resume_reading()

    def early(self, data: bytes) -> None:
        self._early.append(data)
        if self.down.transport is not None:
            self.down.transport.pause_reading()  # resumed once connected

    def sockets(self) -> tuple[socket.socket | None, socket.socket | None]:
        out: list[socket.socket | None] = []
        for side in (self.down, self.up):
            t = side.transport
            out.append(t.get_extra_info("socket") if t is not None else None)
        return out[0], out[1]

    def read_facts(self) -> ConnectionFacts | None:
        t = self.down.transport
        return transport_facts(self.ctx.cfg, t, self.original_destination) if t else None

    def close(self) -> None:
        self.closing()
        for side in (self.down, self.up):
            if side.transport is not None:
                side.transport.close()
        self.finished()

    def idle_close(self) -> None:
        self.close()

    def abort(self) -> None:
        self.closing()
        self.set_reason("aborted")
        for side in (self.down, self.up):
            t = side.transport
            if t is not None:
                sock = t.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
                t.abort()
        self.finished()
