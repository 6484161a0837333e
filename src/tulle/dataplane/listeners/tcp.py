"""Opaque TCP relay: bytes from the client to one upstream connection and back, unparsed.

A relay starts from a live downstream transport (handed over by the detection driver, with any
bytes it already read) and a target: a `tcp` cluster (round robin over its endpoints; a TCP
cluster has no pool, every client connection dials its own upstream connection) or a fixed
address (passthrough to a transparent connection's original destination).

Two engines, one behaviour:

* `SpliceRelay` (plaintext on both sides, the normal case): the client's socket is taken out of
  its transport (the fd is duplicated, then the transport is aborted: closing one of two fds of
  a socket neither closes the socket nor resets it) and bytes move socket -> pipe -> socket with
  `os.splice`, never entering Python.  Each direction owns a pipe of `PIPE_SIZE` bytes and
  alternates "fill the empty pipe from the source" and "drain the pipe into the destination",
  so EAGAIN is never ambiguous and at most one pipe of data is in flight per direction (the
  flow control: a slow reader stops the sender being read).
* `CopyRelay` (TLS on either side, or no `os.splice`): two asyncio Protocols that write what
  one reads into the other, with pause/resume reading driven by the other side's write buffer.

Both half-close: EOF from one side becomes shutdown(SHUT_WR) on the other and the other
direction keeps flowing; the relay ends when both directions have ended.  A reset (or a write
that fails) on either side resets the other.  Connect failures and timeouts close the client
and count `tulle_proxy_upstream_connect_failures_total`.

Both have an idle timeout (`settings.tcp_idle_timeout_ms`, Envoy's tcp_proxy `idle_timeout`):
a relay that moved no bytes either way for that long is closed on both sides and counted in
`tulle_proxy_tcp_idle_timeouts_total`, so an abandoned peer never pins an application
connection forever.  Activity is a loop-clock stamp per readiness callback (splice) or read
(copy); the proxy's deadline sweeper checks it, so the close comes at most one sweeper tick
late.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import ipaddress
import os
import socket
import struct
from typing import TYPE_CHECKING, Final, cast

from tulle.dataplane.listeners.context import Connection, ListenerHandle

if TYPE_CHECKING:
    from tulle.dataplane.telemetry.metrics import CounterChild, GaugeChild
    from tulle.dataplane.upstream.cluster import ClusterRuntime
    from tulle.dataplane.upstream.lb import EndpointState

PASSTHROUGH: Final = "PassthroughCluster"
"""Metric label of relays to an original destination (Istio's name for the same thing)."""
PASSTHROUGH_CONNECT_TIMEOUT: Final = 5.0

HAS_SPLICE: Final = hasattr(os, "splice")
USE_SPLICE = HAS_SPLICE
"""Module switch: tests turn it off to exercise the copy relay on plaintext connections."""

PIPE_SIZE: Final = 1 << 18
"""Bytes of one direction's pipe (F_SETPIPE_SZ); the kernel may round up, or refuse and keep
its default when the user's pipe budget is spent.  Measured on loopback, 2 GiB one way: 64 KiB
pipes cost ~0.87 s of proxy CPU, 256 KiB ~0.7 s, 1 MiB ~0.5 s; the copy relay ~1.4 s."""
_F_SETPIPE_SZ: Final = 1031
_F_GETPIPE_SZ: Final = 1032
_SPLICE_FLAGS: Final = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_ROUNDS: Final = 16
"""Pipe fills per readiness callback before yielding to other connections."""
_LINGER_RESET: Final = struct.pack("ii", 1, 0)
"""SO_LINGER on, 0 s: close() sends RST instead of FIN."""
_READ: Final = 1
_WRITE: Final = 2


class Target:
    """Where a relay connects: a cluster's next endpoint, or a fixed address."""

    __slots__ = ("address", "cluster", "name")

    def __init__(self, name: str, cluster: ClusterRuntime | None = None,
                 address: tuple[str, int] | None = None) -> None:
        self.name = name
        self.cluster = cluster
        self.address = address

    @classmethod
    def passthrough(cls, ip: str, port: int) -> Target:
        return cls(PASSTHROUGH, None, (ip, port))


def relay(handle: ListenerHandle, transport: asyncio.Transport, initial: bytes,
          target: Target) -> Connection:
    """Start relaying a client connection to `target`; the relay owns `transport` from now on."""
    cluster = target.cluster
    plain = (transport.get_extra_info("sslcontext") is None
             and transport.get_extra_info("socket") is not None
             and (cluster is None or cluster.ssl_context is None))
    conn: _Relay = (SpliceRelay if USE_SPLICE and plain else CopyRelay)(handle, target)
    conn.start(transport, initial)
    return conn


class _Relay(Connection):
    """What both engines share: dialling, metrics, registration with the listener."""

    def __init__(self, handle: ListenerHandle, target: Target) -> None:
        self.handle = handle
        self.ctx = ctx = handle.ctx
        self.loop = asyncio.get_running_loop()
        self.target = target
        self.ended = False
        self.idle_timeout = ctx.settings.tcp_idle_timeout_ms / 1000
        self.last_active = now = self.loop.time()
        """Loop time of the last bytes moved (or of the start)."""
        self.deadline = now + self.idle_timeout if self.idle_timeout else 0.0
        self._task: asyncio.Task[None] | None = None
        self._endpoint: EndpointState | None = None
        self._up_active: GaugeChild | None = None
        m = ctx.metrics
        self.m_sent: CounterChild = m.tcp_bytes.labels(ctx.name, target.name, "sent")
        self.m_received: CounterChild = m.tcp_bytes.labels(ctx.name, target.name, "received")
        handle.connection_opened(self)

    def start(self, transport: asyncio.Transport, initial: bytes) -> None:
        raise NotImplementedError

    def _destination(self) -> tuple[str, int, float] | None:
        t = self.target
        if t.cluster is None:
            assert t.address is not None
            return t.address[0], t.address[1], PASSTHROUGH_CONNECT_TIMEOUT
        ep = t.cluster.pick()
        if ep is None:
            return None
        self._endpoint = ep
        return ep.address, ep.port, t.cluster.connect_timeout

    def _connected(self) -> None:
        m = self.ctx.metrics
        m.tcp_connections.labels(self.ctx.name, self.target.name).value += 1
        cluster = self.target.cluster
        if cluster is not None:
            cluster.m_connections_total.value += 1
            self._up_active = cluster.m_connections_active
        else:
            m.upstream_connections_total.labels(PASSTHROUGH).value += 1
            self._up_active = m.upstream_connections_active.labels(PASSTHROUGH)
        self._up_active.value += 1
        if self._endpoint is not None:
            self._endpoint.active += 1

    def _connect_failed(self) -> None:
        cluster = self.target.cluster
        if cluster is not None:
            cluster.m_connect_failures.value += 1
        else:
            self.ctx.metrics.upstream_connect_failures.labels(PASSTHROUGH).value += 1

    def _ended(self) -> None:
        """Bookkeeping once, when the relay is over (both sockets closed or closing)."""
        if self.ended:
            return
        self.ended = True
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        if self._up_active is not None:
            self._up_active.value -= 1
            self._up_active = None
        if self._endpoint is not None and self._endpoint.active > 0:
            self._endpoint.active -= 1
        self._endpoint = None
        self.handle.connection_closed(self)

    # -- Connection ----------------------------------------------------------------------

    def on_deadline(self, now: float) -> None:
        """The idle timeout: close when nothing moved for `idle_timeout`, else look again then."""
        if self.ended or not self.idle_timeout:
            self.deadline = 0.0
            return
        due = self.last_active + self.idle_timeout
        if due > now:
            self.deadline = due
            return
        self.deadline = 0.0
        ctx = self.ctx
        ctx.metrics.tcp_idle_timeouts.labels(ctx.name, self.target.name).value += 1
        self.idle_close()

    def idle_close(self) -> None:
        """Close both sides (FIN, not RST: nothing was cut short, it was abandoned)."""
        raise NotImplementedError

    def start_drain(self) -> None:
        """An opaque stream has no request boundary to stop at: it runs until it ends, or until
        the drain deadline aborts it."""


# -- splice engine -----------------------------------------------------------------------


def _detach(transport: asyncio.Transport) -> socket.socket:
    """A socket object of our own for the transport's connection; the transport is closed.

    Works on uvloop and the stdlib loop: both close only their own fd on abort (no shutdown, no
    SO_LINGER), and both remove the fd from their poller before closing it.
    """
    transport.pause_reading()
    raw = cast(socket.socket, transport.get_extra_info("socket"))
    fd = os.dup(raw.fileno())
    transport.set_protocol(_Detached())
    transport.abort()
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


class _Detached(asyncio.Protocol):
    """Takes the aborted transport's last callbacks after its socket moved to a relay."""


def _new_pipe() -> tuple[int, int, int]:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        size = fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:  # over the user's pipe budget (fs.pipe-user-pages-*): keep what we got
        size = fcntl.fcntl(w, _F_GETPIPE_SZ)
    return r, w, size


class _Pump:
    """One direction of a splice relay: src socket -> pipe -> dst socket."""

    __slots__ = ("counter", "dst", "eof", "in_pipe", "pending", "pipe_r", "pipe_w", "relay",
                 "size", "src", "waiting", "wire")

    def __init__(self, relay: SpliceRelay, src: socket.socket, dst: socket.socket,
                 counter: CounterChild, wire: CounterChild, pending: bytes) -> None:
        self.relay = relay
        self.src = src.fileno()
        self.dst = dst.fileno()
        self.counter = counter
        self.wire = wire
        self.pending = pending
        self.pipe_r, self.pipe_w, self.size = _new_pipe()
        self.in_pipe = 0
        self.waiting = 0
        self.eof = False

    def step(self) -> None:
        if self.pipe_r < 0:
            return  # closed by the other direction earlier in this loop iteration
        relay = self.relay
        relay.last_active = relay.loop.time()
        splice = os.splice
        flags = _SPLICE_FLAGS
        try:
            for _ in range(_ROUNDS):
                if self.pending:  # bytes the detection driver read before the hand-over
                    n = os.write(self.dst, self.pending)
                    self.pending = self.pending[n:]
                    self.counter.value += n
                    self.wire.value += n
                    continue
                while self.in_pipe:
                    n = splice(self.pipe_r, self.dst, self.in_pipe, flags=flags)
                    self.in_pipe -= n
                    self.counter.value += n
                    self.wire.value += n
                n = splice(self.src, self.pipe_w, self.size, flags=flags)
                if n == 0:
                    self._finish()
                    return
                self.in_pipe = n
        except BlockingIOError:
            # The pipe is only ever filled when empty, so EAGAIN with an empty pipe means the
            # source has nothing; with bytes in the pipe (or pending) the destination is full.
            self._wait(_WRITE if self.in_pipe or self.pending else _READ)
            return
        except OSError as exc:
            self.relay.reset(exc)
            return
        self._wait(_WRITE if self.in_pipe else _READ)

    def _wait(self, what: int) -> None:
        if self.waiting == what:
            return
        loop = self.relay.loop
        self._unwatch()
        if what == _READ:
            loop.add_reader(self.src, self.step)
        else:
            loop.add_writer(self.dst, self.step)
        self.waiting = what

    def _unwatch(self) -> None:
        loop = self.relay.loop
        if self.waiting == _READ:
            loop.remove_reader(self.src)
        elif self.waiting == _WRITE:
            loop.remove_writer(self.dst)
        self.waiting = 0

    def _finish(self) -> None:
        self._unwatch()
        self.eof = True
        with contextlib.suppress(OSError):
            os.close(self.pipe_r)
            os.close(self.pipe_w)
        self.pipe_r = self.pipe_w = -1
        self.relay.direction_ended(self)

    def close(self) -> None:
        self._unwatch()
        for fd in (self.pipe_r, self.pipe_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.pipe_r = self.pipe_w = -1


class SpliceRelay(_Relay):
    """Zero-copy relay between two plaintext sockets."""

    def __init__(self, handle: ListenerHandle, target: Target) -> None:
        super().__init__(handle, target)
        self.client: socket.socket | None = None
        self.upstream: socket.socket | None = None
        self.pumps: list[_Pump] = []

    def start(self, transport: asyncio.Transport, initial: bytes) -> None:
        try:
            self.client = _detach(transport)
        except OSError:  # EMFILE from dup: drop the client and give its slot back
            transport.abort()
            self._ended()
            return
        self._task = self.loop.create_task(self._run(initial))

    async def _run(self, initial: bytes) -> None:
        dest = self._destination()
        if dest is None:
            self._connect_failed()
            self._close(reset=False)
            return
        host, port, timeout = dest
        try:
            sock = await asyncio.wait_for(_dial(self.loop, host, port), timeout)
        except (OSError, TimeoutError):
            self._connect_failed()
            self._close(reset=False)
            return
        if self.ended:  # aborted while dialling
            sock.close()
            return
        self.upstream = sock
        self._connected()
        assert self.client is not None
        ctx = self.ctx
        try:  # two pipes: out of descriptors here must still close both sockets
            self.pumps.append(
                _Pump(self, self.client, sock, self.m_received, ctx.m_bytes_received, initial))
            self.pumps.append(_Pump(self, sock, self.client, self.m_sent, ctx.m_bytes_sent, b""))
        except OSError:
            self._task = None
            self._close(reset=True)
            return
        up, down = self.pumps
        self._task = None
        up.step()
        if not self.ended:
            down.step()

    def direction_ended(self, pump: _Pump) -> None:
        """EOF from `pump`'s source: pass it on as a FIN, keep the other direction going."""
        for s in (self.client, self.upstream):
            if s is not None and s.fileno() == pump.dst:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_WR)
        if all(p.eof for p in self.pumps):
            self._close(reset=False)

    def reset(self, exc: OSError | None) -> None:
        """A side reset or failed: reset the other (RST, not FIN: the stream was cut short)."""
        self._close(reset=True)

    def abort(self) -> None:
        self._close(reset=True)

    def idle_close(self) -> None:
        self._close(reset=False)

    def _close(self, reset: bool) -> None:
        for p in self.pumps:
            p.close()
        for s in (self.client, self.upstream):
            if s is None:
                continue
            if reset:
                with contextlib.suppress(OSError):
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            s.close()
        self.client = self.upstream = None
        self._ended()


async def _dial(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
        addr: tuple[str, int] = (host, port)
    except ValueError:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(errno.EHOSTUNREACH, f"{host} does not resolve") from None
        family, _, _, _, sa = infos[0]
        addr = (str(sa[0]), int(sa[1]))
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.sock_connect(sock, addr)
    except BaseException:
        sock.close()
        raise
    return sock


# -- copy engine -------------------------------------------------------------------------


class _Side(asyncio.Protocol):
    """One socket of a copy relay; what it reads goes to its peer side."""

    __slots__ = ("counter", "eof", "peer", "relay", "transport", "wire")

    def __init__(self, relay: CopyRelay, counter: CounterChild, wire: CounterChild) -> None:
        self.relay = relay
        self.counter = counter
        self.wire = wire
        self.peer: _Side | None = None
        self.transport: asyncio.Transport | None = None
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        relay = self.relay
        relay.last_active = relay.loop.time()
        peer = self.peer
        if peer is not None and peer.transport is not None:
            self.counter.value += len(data)
            self.wire.value += len(data)
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
            self.relay.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if exc is not None:
            self.relay.abort()
        else:
            self.relay.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class CopyRelay(_Relay):
    """Relay through asyncio transports (TLS, or where splice is unavailable)."""

    def __init__(self, handle: ListenerHandle, target: Target) -> None:
        super().__init__(handle, target)
        ctx = self.ctx
        self.down = _Side(self, self.m_received, ctx.m_bytes_received)
        self.up = _Side(self, self.m_sent, ctx.m_bytes_sent)
        self.down.peer, self.up.peer = self.up, self.down
        self._early: list[bytes] = []

    def start(self, transport: asyncio.Transport, initial: bytes) -> None:
        transport.pause_reading()
        if initial:
            self._early.append(initial)
        transport.set_protocol(self.down)
        self.down.connection_made(transport)
        transport.set_write_buffer_limits(high=self.ctx.high_water)
        self._task = self.loop.create_task(self._run())

    async def _run(self) -> None:
        dest = self._destination()
        if dest is None:
            self._connect_failed()
            self.close()
            return
        host, port, timeout = dest
        cluster = self.target.cluster
        ssl_ctx = cluster.ssl_context if cluster is not None else None
        sni = (cluster.sni or host) if ssl_ctx is not None and cluster is not None else None
        try:
            transport, _ = await asyncio.wait_for(self.loop.create_connection(
                lambda: self.up, host, port, ssl=ssl_ctx, server_hostname=sni), timeout)
        except (OSError, TimeoutError):
            self._connect_failed()
            self.close()
            return
        self._task = None
        if self.ended:
            transport.abort()
            return
        self._connected()
        transport.set_write_buffer_limits(high=self.ctx.high_water)
        early, self._early = self._early, []
        for chunk in early:
            self.down.counter.value += len(chunk)
            self.down.wire.value += len(chunk)
            transport.write(chunk)
        if self.down.eof:
            transport.write_eof()
        if self.down.transport is not None:
            self.down.transport.resume_reading()

    def early(self, data: bytes) -> None:
        self._early.append(data)
        if self.down.transport is not None:
            self.down.transport.pause_reading()  # resumed once connected

    def close(self) -> None:
        for side in (self.down, self.up):
            if side.transport is not None:
                side.transport.close()
        self._ended()

    def idle_close(self) -> None:
        self.close()

    def abort(self) -> None:
        for side in (self.down, self.up):
            t = side.transport
            if t is not None:
                sock = t.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                t.abort()
        self._ended()
