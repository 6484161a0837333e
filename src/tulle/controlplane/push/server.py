"""The control plane's end of the proxy stream: who is connected, what each one runs.

Each connected proxy has one `ProxySession` (`session.py`).  The compiler puts snapshots into the
`SnapshotCache` by proxy key; a session sends the first one whole, and later ones as a delta
against the version the proxy last ACKed.  At most one push is in flight per proxy: when a newer
snapshot arrives meanwhile it is sent after the ACK/NACK, as one delta (intermediate versions are
skipped — a proxy only ever needs the newest).  A NACK is recorded with its reason and the proxy
keeps its last good config; the next change is diffed against that config.

Frames are built by the cache's `WireCache` (each resource encoded once for every proxy; deltas
found by object identity), and at most `max_inflight_pushes` sessions write at once, each until
its frame has left our buffer or for `stall_timeout` at most (a slow push then goes on outside
the slots): a push to 2,000 proxies never holds 2,000 full snapshots in memory, and a proxy
that reads slowly holds up no other proxy's push for longer than that.  A proxy that takes
nothing of a push for `stall_timeout` (its kernel buffers full, not reading) has its stream
closed at once, counted (`stalledPushes`) and logged (ADR 0118): the rest of its frame is
never buffered for it.

One stream per workload (`holders.py`, ADR 0118): an admitted stream ends the stream that held
any of its workloads on this replica, which is told why (`Error`), counted
(`replacedStreams`) and logged; the newest wins, so a proxy that reconnects while its old
stream is half-open is served at once.

A `hello` names the stream protocol, contract versions and config features the proxy speaks
(ADR 0011).  A protocol or contract version this control plane does not speak gets an `Error`
saying which it does, and the connection is closed (logged once per proxy and version: a proxy
that retries does not flood the log).  A proxy lacking a feature gets snapshots without that
feature's fields; its status lists what was withheld.  The delta units (ADR 0018: virtual
hosts, endpoints, positions) are features too: a proxy that lacks one gets the changed
resources whole, and its status lists the units it takes (`delta_units`).

Before `hello` a connection is anonymous and held to little: frames of at most
`HELLO_MAX_FRAME` bytes, `hello_timeout` seconds to say hello, at most `max_pending_hellos`
such connections at once, and at most `max_connections` connections in all (beyond either cap
a new connection is closed at once, counted and logged).  Once the hello is in, frames may be
as large as `MAX_FRAME` (snapshots of a big mesh).

Both caps are also held to a share of the soft `RLIMIT_NOFILE` (`STREAM_FD_SHARE`,
`PENDING_FD_SHARE`), read at every accept since `prlimit` can lower it while we run: the
stream must never take the descriptors the REST API and the store need.  Without the share,
anonymous connections held for the hello timeout could exhaust the descriptors below a
`max_connections` larger than the limit (systemd's default soft limit is 1,024), and the
separate pre-hello cap keeps room for proxies that do say hello.

Admission (ADR 0028): with an `admission` (the control plane always passes one), a hello must
carry a bootstrap token and a CSR, or the workload's certificate and a proof of its key; it is
then served that one workload only, and its certificate is sent before any snapshot.  A refused
hello gets an `Error` with the reason (never the token) and is counted (`unauthenticatedHellos`).
A hello whose credential checked out but which announces what it may not change about its
Workload (`Reconciler.register`) is refused the same way, counted as a bad hello and logged
(`refused`).
A `Csr` on an admitted stream renews the certificate for the same identity.

TLS (ADR 0034): with a `tls` context (the control plane always passes one unless started with
`--stream-plaintext`) each connection is counted against the caps first, then upgraded to
TLS 1.3 within `hello_timeout`; a peer that fails the handshake (a plaintext client, a port
scan, a client that does not trust us) is closed, counted as `tlsHandshakeFailures` and
logged at most once per `REFUSAL_LOG_INTERVAL`.  The hello timeout starts after the handshake.

Readiness (ADR 0040): `on_presence` is told when a proxy's session starts, when it serves (its
first ACK, for a proxy that announces `serving-ack` and did not already serve at its hello:
ADR 0116), and when it ends (with why: the proxy closed or reset the stream, or sent nothing
for `liveness_timeout` seconds, after which the stream is closed); `controlplane/readiness.py`
writes it into the Workload's status.  A session cancelled because this control plane stops reports nothing.

`statuses()` is what `tulle get proxies` shows; `counters()` what the stream refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Protocol

from tulle.controlplane.ca.admission import Admission, Admitted
from tulle.controlplane.push.accept import (
    PushStalled,
    TlsListener,
    abort_socket,
    handshake,
    peer_of,
)
from tulle.controlplane.push.cache import ProxyKey, ProxyStatus, SnapshotCache
from tulle.controlplane.push.holders import StreamHolders
from tulle.controlplane.push.limits import (
    DEFAULT_HELLO_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PENDING_HELLOS,
    PENDING_FD_SHARE,
    REFUSAL_LOG_INTERVAL,
    STREAM_FD_SHARE,
    _Budget,
    _Throttled,
    effective_caps,
    soft_fd_limit,
)
from tulle.controlplane.push.reported import SHOWN_REASON, shown
from tulle.controlplane.push.session import ProxySession
from tulle.controlplane.telemetry.tap import TapBroker
from tulle.controlplane.telemetry.window import StatsWindow
from tulle.logthrottle import ThrottledByKey
from tulle.proxyconfig.stream import (
    HELLO_MAX_FRAME,
    FrameError,
    Hello,
    WorkloadInfo,
)

log = logging.getLogger("tulle.controlplane.push")

__all__ = ["CLOSE_GRACE", "DEFAULT_HELLO_TIMEOUT", "DEFAULT_MAX_CONNECTIONS",
           "DEFAULT_MAX_PENDING_HELLOS", "DEFAULT_STALL_TIMEOUT", "PENDING_FD_SHARE",
           "REFUSAL_LOG_INTERVAL", "STREAM_FD_SHARE", "PushServer", "SnapshotCache",
           "effective_caps", "soft_fd_limit"]

DEFAULT_STALL_TIMEOUT = 10.0
"""Seconds a push may go without the proxy taking any of it (`--stream-stall-timeout`)."""
CLOSE_GRACE = 2.0
"""Seconds an ended stream is given to close cleanly (TLS close_notify, what is buffered)
before it is aborted: a peer that does not read, or a half-open one, must not keep its
connection (and its buffers) for the TLS layer's own shutdown timeout (measured: 30 s under
uvloop, after the liveness timeout's 30 s).  ADR 0118."""

RegisterHook = Callable[[WorkloadInfo, str, Admitted | None], Awaitable[None]]
"""Called with the workload a proxy announced, its peer address and who it was admitted as
(None without admission), before it is served."""

class PresenceHook(Protocol):
    """Called with the workloads of a session, whether they are endpoints now (True) or not
    (False), why, and the session's id; `claim` for a session's start that is not an endpoint
    yet (ADR 0116: written over whatever session is stored, as True is).  Awaited on the
    session's path: it should only queue the write."""

    async def __call__(self, keys: list[ProxyKey], connected: bool, reason: str, session: str,
                       *, claim: bool = False) -> None: ...


class PushServer:
    def __init__(self, cache: SnapshotCache, *, on_register: RegisterHook | None = None,
                 instance: str = "cp", ping_interval: float = 10.0,
                 on_ack: Callable[[ProxyKey, str], None] | None = None,
                 max_inflight_pushes: int = 64,
                 stall_timeout: float = DEFAULT_STALL_TIMEOUT,
                 hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 max_pending_hellos: int = DEFAULT_MAX_PENDING_HELLOS,
                 hello_max_frame: int = HELLO_MAX_FRAME,
                 fd_limit: Callable[[], int] = soft_fd_limit,
                 admission: Admission | None = None,
                 tls: ssl.SSLContext | None = None,
                 on_presence: PresenceHook | None = None,
                 liveness_timeout: float = 30.0,
                 stats: StatsWindow | None = None, stats_interval: float = 5.0,
                 taps: TapBroker | None = None) -> None:
        if hello_timeout <= 0:
            raise ValueError("hello_timeout must be positive")
        if stall_timeout <= 0:
            raise ValueError("stall_timeout must be positive")
        if max_connections < 0:
            raise ValueError("max_connections must be >= 0 (0: no limit)")
        if max_pending_hellos < 0:
            raise ValueError("max_pending_hellos must be >= 0 (0: no cap of their own)")
        self.hello_timeout = hello_timeout
        self.max_connections = max_connections
        """As configured; `caps` holds what is in force (clamped to the descriptor limit)."""
        self.max_pending_hellos = max_pending_hellos
        self.hello_max_frame = hello_max_frame
        self._fd_limit = fd_limit
        self.caps = effective_caps(max_connections, max_pending_hellos, 0)
        self._caps_fd_limit = -1
        self.pending_hellos = 0
        """Open connections that have not said hello yet."""
        self.refused_connections = 0
        self.refused_pending = 0
        self.hello_timeouts = 0
        self.bad_hellos = 0
        self.unsupported_hellos = 0
        self.unauthenticated_hellos = 0
        self.admission = admission
        self.tls = tls
        """The server context (live: a re-issued certificate reaches new handshakes); None
        serves plaintext (unit tests of the stream, `--stream-plaintext`)."""
        self.tls_failures = 0
        self._log_tls = _Throttled("closed: TLS handshake failed")
        """None only in unit tests of the stream itself; the control plane always sets it."""
        self._told: set[tuple[str, str, str]] = set()
        self.disconnects_before_hello = 0
        self._log_refused = _Throttled("refused, over --stream-max-connections")
        self._log_refused_pending = _Throttled("refused, over --stream-max-pending-hellos")
        self._log_no_hello = _Throttled("closed before a valid hello")
        self._log_refused_hello = ThrottledByKey(log, REFUSAL_LOG_INTERVAL)
        self._new_refusal_lines = _Budget()
        self._log_unauthenticated = _Throttled("hellos not admitted, over the log budget")
        self.cache = cache
        self.on_register = on_register
        self.on_presence = on_presence
        self.liveness_timeout = liveness_timeout
        """Seconds without a frame from a proxy (it answers every ping) before its stream is
        closed as lost; 0: never."""
        self.on_ack = on_ack
        self.instance = instance
        self.ping_interval = ping_interval
        self.stall_timeout = stall_timeout
        """Seconds a push may go without the proxy taking any of it before its stream is
        closed; also the longest a push holds one of the `max_inflight_pushes` slots."""
        self.push_slots = asyncio.Semaphore(max_inflight_pushes)
        self.holders: StreamHolders[ProxySession] = StreamHolders()
        """Which session holds each workload's stream: one per workload (ADR 0118)."""
        self.replaced_streams = 0
        self.stalled_pushes = 0
        self._log_replaced = ThrottledByKey(log, REFUSAL_LOG_INTERVAL)
        self._log_stalled = ThrottledByKey(log, REFUSAL_LOG_INTERVAL)
        self.status: dict[ProxyKey, ProxyStatus] = {}
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._listener: TlsListener | None = None
        self.live: set[ProxySession] = set()
        """Admitted sessions, for `trust_changed`."""
        self.stats = stats
        """Where proxies' traffic reports go (`tulle stat`, ADR 0046); None: none asked for."""
        self.stats_interval = stats_interval
        self.taps = taps
        """Live taps (`tulle tap`, ADR 0056); None: this control plane starts none."""

    def trust_changed(self) -> None:
        """The CA state changed (a rotation stage, ADR 0035): tell every proxy that takes it."""
        for session in list(self.live):
            session.send_trust()

    def update_caps(self) -> tuple[int, int]:
        """The caps in force for the current soft RLIMIT_NOFILE; logged when it changes them
        (at start, and whenever the limit changes while we run)."""
        limit = self._fd_limit()
        if limit != self._caps_fd_limit:
            self._caps_fd_limit = limit
            self.caps = total, pending = effective_caps(
                self.max_connections, self.max_pending_hellos, limit)
            if total != self.max_connections or pending != self.max_pending_hellos:
                log.warning("proxy stream: with the soft RLIMIT_NOFILE at %d, at most %s "
                            "connections (--stream-max-connections %d) and %s before hello "
                            "(--stream-max-pending-hellos %d)", limit, total or "unlimited",
                            self.max_connections, pending or "unlimited",
                            self.max_pending_hellos)
        return self.caps

    async def start(self, host: str, port: int, sock: socket.socket | None = None) -> int:
        """Listen on `host:port`, or on `sock` when given (already listening)."""
        self.update_caps()
        if self.tls is not None:
            self._listener = TlsListener(self._serve_tls)
            return await self._listener.start(host, port, sock)
        if sock is not None:
            self._server = await asyncio.start_server(self._serve_plain, sock=sock)
        else:
            self._server = await asyncio.start_server(self._serve_plain, host, port)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._listener is not None:
            await self._listener.close()
        for t in list(self._sessions):
            t.cancel()
        for t in list(self._sessions):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    def statuses(self) -> list[ProxyStatus]:
        return [self.status[k] for k in sorted(self.status)]

    def counters(self) -> dict[str, int]:
        """Open connections and what the stream refused, since it started."""
        total, pending = self.caps
        return {"connections": len(self._sessions), "maxConnections": total,
                "pendingHellos": self.pending_hellos, "maxPendingHellos": pending,
                "refusedConnections": self.refused_connections,
                "refusedPendingHellos": self.refused_pending,
                "helloTimeouts": self.hello_timeouts, "badHellos": self.bad_hellos,
                "unsupportedHellos": self.unsupported_hellos,
                "unauthenticatedHellos": self.unauthenticated_hellos,
                "disconnectsBeforeHello": self.disconnects_before_hello,
                "tlsHandshakeFailures": self.tls_failures,
                "replacedStreams": self.replaced_streams,
                "stalledPushes": self.stalled_pushes}

    def replaced(self, workload: str, old_peer: str, new_peer: str) -> None:
        """A stream was ended by a newer one of its workload: counted; logged per workload,
        the first at once, then at most once per `REFUSAL_LOG_INTERVAL` with the count since
        (a proxy reconnecting in a loop does not flood the log)."""
        self.replaced_streams += 1
        self._log_replaced((workload,), asyncio.get_running_loop().time(),
                           "proxy %s: its stream from %s was replaced by a newer one from %s "
                           "(one stream per workload)", workload, old_peer, new_peer)

    def stalled(self, session: ProxySession, version: str, exc: PushStalled) -> None:
        """A push the proxy took nothing of for `stall_timeout`: counted, logged like
        `replaced`."""
        self.stalled_pushes += 1
        keys = session.node.keys
        who = f"{keys[0][0]}/{keys[0][1]}" if keys else "?"
        self._log_stalled((who,), asyncio.get_running_loop().time(),
                          "proxy %s from %s read nothing of version %s for %gs (%d of %d "
                          "bytes not taken): stream closed", who, session.peer, version,
                          exc.stall, exc.unsent, exc.size)

    def unsupported(self, hello: Hello, peer: str, reason: str) -> None:
        """A hello this control plane cannot serve: count it, log it once per proxy and reason
        (the proxy retries with backoff; the log says it once, the counter counts them all)."""
        self.unsupported_hellos += 1
        w = hello.workload
        told = (shown(f"{w.namespace}/{w.name}"), str(hello.protocol),
                shown(",".join(hello.api_versions)))
        if told in self._told:
            return
        if len(self._told) >= 4096:  # bounded: a peer inventing names cannot grow it forever
            self._told.clear()
        self._told.add(told)
        log.warning("proxy %s from %s refused: %s", told[0], peer, shown(reason, SHOWN_REASON))

    def unauthenticated(self, hello: Hello, peer: str, reason: str) -> None:
        """A hello that did not prove its workload: counted; logged once per workload and
        reason (the reason never holds a token or key), and at most `NEW_REFUSAL_LINES` such
        lines per `REFUSAL_LOG_INTERVAL`: a peer needs no credential to invent a workload
        name per hello, and the rest are summed up in one throttled line."""
        self.unauthenticated_hellos += 1
        w = hello.workload
        told = (shown(f"{w.namespace}/{w.name}"), "auth", shown(reason, SHOWN_REASON))
        if told in self._told:
            return
        if not self._new_refusal_lines.take():
            self._log_unauthenticated(peer, f"{told[0]}: {told[2]}")
            return
        if len(self._told) >= 4096:
            self._told.clear()
        self._told.add(told)
        log.warning("proxy %s from %s not admitted: %s", told[0], peer, told[2])

    def refused(self, hello: Hello, peer: str, reason: str) -> None:
        """A hello that proved its workload but says what it may not change about it (an
        address, service account or labels: `Reconciler.register`): counted as a bad hello
        and logged like a refused credential, per workload and reason, the first at once and
        then at most once per `REFUSAL_LOG_INTERVAL` with the count since (a proxy retries
        with backoff; the counter counts every one).  The reason holds no token or key."""
        self.bad_hellos += 1
        w = hello.workload
        who, why = shown(f"{w.namespace}/{w.name}"), shown(reason, SHOWN_REASON)
        self._log_refused_hello((who, why), asyncio.get_running_loop().time(),
                                "proxy %s from %s not admitted: %s", who, peer, why)

    def _refuse(self, abort: Callable[[], None], peer: str, pending: bool) -> None:
        """Over a cap: close at once (RST, nothing buffered), count, log."""
        abort()
        self.refused_connections += 1
        if pending:
            self.refused_pending += 1
            self._log_refused_pending(peer, f"{self.pending_hellos} before hello")
        else:
            self._log_refused(peer, f"{len(self._sessions)} open")

    def said_hello(self) -> None:
        self.pending_hellos -= 1

    def disconnected_before_hello(self, peer: str) -> None:
        """The peer closed before sending anything whole (a port probe, a proxy giving up):
        counted, logged at debug level only; it is not a protocol error."""
        self.disconnects_before_hello += 1
        log.debug("proxy stream from %s closed before its hello", peer)

    def no_hello(self, peer: str, timed_out: bool, detail: str) -> None:
        """A connection closed before a valid hello: count and log it."""
        if timed_out:
            self.hello_timeouts += 1
        else:
            self.bad_hellos += 1
        self._log_no_hello(peer, detail)

    async def _serve_plain(self, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter) -> None:
        async def opened() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return reader, writer

        await self._serve(peer_of(writer.get_extra_info("peername")), writer.transport.abort,
                          opened)

    async def _serve_tls(self, sock: socket.socket, peer: str) -> None:
        tls = self.tls
        assert tls is not None
        await self._serve(peer, lambda: abort_socket(sock),
                          lambda: handshake(sock, tls, self.hello_timeout))

    async def _serve(self, peer_s: str, abort: Callable[[], None],
                     opened: Callable[[], Awaitable[tuple[asyncio.StreamReader,
                                                          asyncio.StreamWriter]]]) -> None:
        """One connection: the caps (on the raw connection), the TLS handshake if any, then
        the session."""
        task = asyncio.current_task()
        assert task is not None
        total, pending = self.update_caps()
        if total and len(self._sessions) >= total:
            self._refuse(abort, peer_s, False)
            return
        if pending and self.pending_hellos >= pending:
            self._refuse(abort, peer_s, True)
            return
        self._sessions.add(task)
        self.pending_hellos += 1
        session: ProxySession | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            try:
                reader, writer = await opened()
            except (ConnectionError, EOFError):
                self.disconnected_before_hello(peer_s)  # a port probe, a proxy giving up
                abort()
                return
            except (ssl.SSLError, OSError, TimeoutError) as exc:
                self.tls_failures += 1
                self._log_tls(peer_s, getattr(exc, "reason", None) or type(exc).__name__)
                abort()
                return
            session = ProxySession(self, reader, writer, peer_s)
            await session.run()
        except (ConnectionError, FrameError, asyncio.IncompleteReadError) as exc:
            log.info("proxy stream from %s ended: %s", peer_s, exc)
        finally:
            if session is None or not session.hello_seen:
                self.pending_hellos -= 1
            self._sessions.discard(task)
            if writer is not None:
                writer.close()
                try:
                    async with asyncio.timeout(CLOSE_GRACE):
                        await writer.wait_closed()
                except TimeoutError:
                    writer.transport.abort()
                except Exception:  # (the peer reset it: it is closed)
                    pass
