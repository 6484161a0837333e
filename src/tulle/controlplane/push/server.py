"""The control plane's end of the proxy stream: who is connected, what each one runs.

Each connected proxy has one `ProxySession`.  The compiler puts snapshots into the
`SnapshotCache` by proxy key; a session sends the first one whole, and later ones as a delta
against the version the proxy last ACKed.  At most one push is in flight per proxy: when a newer
snapshot arrives meanwhile it is sent after the ACK/NACK, as one delta (intermediate versions are
skipped — a proxy only ever needs the newest).  A NACK is recorded with its reason and the proxy
keeps its last good config; the next change is diffed against that config.

Frames are built by the cache's `WireCache` (each resource encoded once for every proxy; deltas
found by object identity), and at most `max_inflight_pushes` sessions write at once, each until
its frame has left our buffer: a push to 2,000 proxies never holds 2,000 full snapshots in
memory, and a proxy that stops reading only ever holds up its own slot, for `drain_timeout`.

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
A `Csr` on an admitted stream renews the certificate for the same identity.

TLS (ADR 0034): with a `tls` context (the control plane always passes one unless started with
`--stream-plaintext`) each connection is counted against the caps first, then upgraded to
TLS 1.3 within `hello_timeout`; a peer that fails the handshake (a plaintext client, a port
scan, a client that does not trust us) is closed, counted as `tlsHandshakeFailures` and
logged at most once per `REFUSAL_LOG_INTERVAL`.  The hello timeout starts after the handshake.

Readiness (ADR 0040): `on_presence` is told when a proxy's session starts and when it ends
(with why: the proxy closed or reset the stream, or sent nothing for `liveness_timeout`
seconds, after which the stream is closed); `controlplane/readiness.py` writes it into the
Workload's status.  A session cancelled because this control plane stops reports nothing.

`statuses()` is what `tulle get proxies` shows; `counters()` what the stream refused.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable

import msgspec

from tulle.controlplane.ca.admission import Admission, AdmissionError, Admitted
from tulle.controlplane.ca.authority import CsrError
from tulle.controlplane.push.accept import (
    TlsListener,
    abort_socket,
    handshake,
    peer_of,
    write_paced,
)
from tulle.controlplane.push.cache import ProxyKey, ProxyStatus, SnapshotCache
from tulle.controlplane.push.limits import (
    DEFAULT_HELLO_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PENDING_HELLOS,
    PENDING_FD_SHARE,
    REFUSAL_LOG_INTERVAL,
    STREAM_FD_SHARE,
    _Throttled,
    effective_caps,
    soft_fd_limit,
)
from tulle.controlplane.push.negotiation import negotiation_error
from tulle.controlplane.push.node import NodeError, NodeSnapshots, workload_name
from tulle.controlplane.push.renewals import RenewalBudget
from tulle.controlplane.push.reported import SHOWN_REASON, shown, shown_list
from tulle.controlplane.push.stats import stats_request, take_report
from tulle.controlplane.push.trust import after_hello, record_signed, update_for
from tulle.controlplane.push.wire import withheld_delta_frame, withheld_snapshot_frame
from tulle.controlplane.telemetry.window import StatsWindow
from tulle.proxyconfig.delta import units_of
from tulle.proxyconfig.features import Feature, lacking
from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.stream import (
    HELLO_MAX_FRAME,
    MAX_FRAME,
    Ack,
    Csr,
    Error,
    FrameDecoder,
    FrameError,
    Hello,
    Message,
    Nack,
    Ping,
    Pong,
    StatsReport,
    StatsRequest,
    TrustAck,
    WorkloadInfo,
    encode,
)

log = logging.getLogger("tulle.controlplane.push")

__all__ = ["DEFAULT_HELLO_TIMEOUT", "DEFAULT_MAX_CONNECTIONS", "DEFAULT_MAX_PENDING_HELLOS",
           "PENDING_FD_SHARE", "REFUSAL_LOG_INTERVAL", "STREAM_FD_SHARE", "PushServer",
           "SnapshotCache", "effective_caps", "soft_fd_limit"]

RegisterHook = Callable[[WorkloadInfo, str, Admitted | None], Awaitable[None]]
"""Called with the workload a proxy announced, its peer address and who it was admitted as
(None without admission), before it is served."""

PresenceHook = Callable[[list[ProxyKey], bool, str, str], Awaitable[None]]
"""Called with the workloads of a session, whether it is starting (True) or over (False), why,
and the session's id.  Awaited on the session's path: it should only queue the write."""


class PushServer:
    def __init__(self, cache: SnapshotCache, *, on_register: RegisterHook | None = None,
                 instance: str = "cp", ping_interval: float = 10.0,
                 on_ack: Callable[[ProxyKey, str], None] | None = None,
                 max_inflight_pushes: int = 64, drain_timeout: float = 10.0,
                 hello_timeout: float = DEFAULT_HELLO_TIMEOUT,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 max_pending_hellos: int = DEFAULT_MAX_PENDING_HELLOS,
                 hello_max_frame: int = HELLO_MAX_FRAME,
                 fd_limit: Callable[[], int] = soft_fd_limit,
                 admission: Admission | None = None,
                 tls: ssl.SSLContext | None = None,
                 on_presence: PresenceHook | None = None,
                 liveness_timeout: float = 30.0,
                 stats: StatsWindow | None = None, stats_interval: float = 5.0) -> None:
        if hello_timeout <= 0:
            raise ValueError("hello_timeout must be positive")
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
        self.cache = cache
        self.on_register = on_register
        self.on_presence = on_presence
        self.liveness_timeout = liveness_timeout
        """Seconds without a frame from a proxy (it answers every ping) before its stream is
        closed as lost; 0: never."""
        self.on_ack = on_ack
        self.instance = instance
        self.ping_interval = ping_interval
        self.drain_timeout = drain_timeout
        self.push_slots = asyncio.Semaphore(max_inflight_pushes)
        self.status: dict[ProxyKey, ProxyStatus] = {}
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._listener: TlsListener | None = None
        self.live: set[ProxySession] = set()
        """Admitted sessions, for `trust_changed`."""
        self.stats = stats
        """Where proxies' traffic reports go (`tulle stat`, ADR 0046); None: none asked for."""
        self.stats_interval = stats_interval

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

    async def start(self, host: str, port: int) -> int:
        self.update_caps()
        if self.tls is not None:
            self._listener = TlsListener(self._serve_tls)
            return await self._listener.start(host, port)
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
                "tlsHandshakeFailures": self.tls_failures}

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
        reason (the reason never holds a token or key)."""
        self.unauthenticated_hellos += 1
        w = hello.workload
        told = (shown(f"{w.namespace}/{w.name}"), "auth", shown(reason, SHOWN_REASON))
        if told in self._told:
            return
        if len(self._told) >= 4096:
            self._told.clear()
        self._told.add(told)
        log.warning("proxy %s from %s not admitted: %s", told[0], peer, told[2])

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
                with contextlib.suppress(Exception):
                    await writer.wait_closed()


REPLY_BACKLOG = 1 << 20
"""Bytes of unsent output above which a session stops reading what its proxy sends until the
output has drained.  Unbounded, a proxy sending pings without reading the pongs grew the
control plane by what it sent: measured, 38 MB of pings left 71 MB in the buffer (ADR 0045)."""


class ProxySession:
    """One connected proxy."""

    def __init__(self, server: PushServer, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, peer: str) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.decoder = FrameDecoder(server.hello_max_frame)
        self.backlog: collections.deque[Message] = collections.deque()
        self.closed = False
        self.acked: ProxyConfig | None = None
        self.inflight: ProxyConfig | None = None
        self.rejected = ""
        self.st: ProxyStatus | None = None
        self.missing: tuple[Feature, ...] = ()
        """Features whose fields this proxy cannot take (withheld from its frames)."""
        self.units: frozenset[str] = frozenset()
        """Delta units this proxy takes."""
        self.node = NodeSnapshots([])
        """The workloads this proxy fronts (usually one) and their merged snapshot."""
        self.node_statuses: list[ProxyStatus] = []
        self.inflight_parts: tuple[ProxyConfig, ...] = ()
        self._node_error = ""
        self.hello_seen = False
        """Set (and the server's pending count released) once the hello is in."""
        self.admitted: Admitted | None = None
        self.session_id = uuid.uuid4().hex
        self.end_reason = "the proxy closed the stream"
        self.renewals: RenewalBudget | None = None
        """Certificates this stream may still have signed (set once admitted)."""
        self.stats_warned = False
        self.stats_ask: StatsRequest | None = None
        """Sent once, after the proxy's first ACK: a proxy serves traffic only once it runs a
        config, and the messages before it (certificates, the snapshot) keep their order."""

    def send(self, msg: Message) -> None:
        self.writer.write(encode(msg))

    async def _next(self) -> Message | None:
        """The proxy's next message; None once it closed the stream."""
        while not self.backlog:
            data = await self.reader.read(65536)
            if not data:
                return None
            self.backlog.extend(self.decoder.feed(data))
        return self.backlog.popleft()

    async def run(self) -> None:
        srv = self.server
        try:
            try:
                first = await asyncio.wait_for(self._next(), timeout=srv.hello_timeout)
            except TimeoutError:
                srv.no_hello(self.peer, True, f"no hello within {srv.hello_timeout}s")
                return
            except FrameError as exc:
                srv.no_hello(self.peer, False, str(exc))
                return
            except ConnectionError:
                srv.disconnected_before_hello(self.peer)
                return
            if first is None:
                srv.disconnected_before_hello(self.peer)
                return
            if not isinstance(first, Hello):
                srv.no_hello(self.peer, False, "first message is not a hello")
                self.send(Error(reason="expected hello"))
                return
            reason = negotiation_error(first)
            if reason:
                srv.unsupported(first, self.peer, reason)
                self.send(Error(reason=reason))
                return
            if srv.admission is not None:
                try:
                    self.admitted = await srv.admission.admit(first)
                except AdmissionError as exc:
                    srv.unauthenticated(first, self.peer, str(exc))
                    self.send(Error(reason=str(exc)))
                    return
            self.decoder.max_frame = MAX_FRAME
            self.hello_seen = True
            srv.said_hello()
            await self._session(first)
        finally:
            for st in self.node_statuses:
                st.connected = False

    async def _read_loop(self, key: ProxyKey, wake: asyncio.Event) -> None:
        """Handle what the proxy sends as it arrives, waking the push loop after each message
        (an ACK may let the next version go out) and when the stream ends."""
        st = self.st
        assert st is not None
        timeout = self.server.liveness_timeout or None
        try:
            # `closed` also set by a handler ending the stream: what is still buffered from
            # the peer is not handled (a burst of frames must not outlive the refusal).
            while not self.closed and (
                    msg := await asyncio.wait_for(self._next(), timeout)) is not None:
                st.last_seen = time.time()  # noqa: TID251 - wall clock, for display
                self._handle(key, msg)
                wake.set()
                if self.writer.transport.get_write_buffer_size() > REPLY_BACKLOG:
                    # Our answers (pongs, certificates) wait for a peer that does not read:
                    # stop reading its requests until they have left (backpressure), or a
                    # ping flood grows this buffer without bound (and one that reads nothing
                    # for the liveness timeout is ended like a silent one).
                    await asyncio.wait_for(self.writer.drain(), timeout)
        except TimeoutError:
            self.end_reason = f"nothing from the proxy (or nothing read by it) for {timeout:g}s"
        except (ConnectionError, FrameError) as exc:
            self.end_reason = f"stream failed: {type(exc).__name__}"
            raise
        finally:
            self.closed = True
            wake.set()

    async def _session(self, hello: Hello) -> None:
        srv = self.server
        w = hello.workload
        key: ProxyKey = (w.namespace, w.name)
        fronted = [w, *hello.workloads]
        keys: list[ProxyKey] = list(dict.fromkeys((x.namespace, x.name) for x in fronted))
        admitted = self._admitted_by_key()
        if srv.on_register is not None:
            try:
                for x in fronted:
                    await srv.on_register(x, self.peer.rsplit(":", 1)[0],
                                          admitted.get((x.namespace, x.name)))
            except ValueError as exc:
                self.send(Error(reason=str(exc)))
                return
        for i, a in enumerate(admitted.values()):
            if a.issued is not None:  # before any snapshot: it may name the identity
                self.send(a.issued if i == 0 else msgspec.structs.replace(
                    a.issued, workload=f"{a.namespace}/{a.workload}"))
        self.node = NodeSnapshots(keys)
        self.missing = tuple(f for f in lacking(hello.features) if f.paths)
        self.units = units_of(hello.features)
        now = time.time()  # noqa: TID251 - wall-clock timestamps for display, not durations
        for k in keys:
            st = srv.status.get(k) or ProxyStatus(*k)
            srv.status[k] = st
            self.node_statuses.append(st)
            st.connected, st.peer, st.connected_since, st.last_seen = True, self.peer, now, now
            st.control_plane = srv.instance
            st.protocol, st.features = hello.protocol, shown_list(hello.features)
            st.withheld, st.delta_units = self.missing, self.units
            st.node = [workload_name(x) for x in keys] if len(keys) > 1 else []
        st = self.st = self.node_statuses[0]
        if srv.admission is not None:
            srv.live.add(self)
            update = after_hello(srv.admission.state, self.node_statuses, self.admitted, hello)
            if update is not None:
                self.send(update)
        self.stats_ask = stats_request(srv.stats, srv.stats_interval, hello.features)
        log.info("proxy %s/%s connected from %s (serving %r)%s", w.namespace, w.name, self.peer,
                 hello.last_version or "nothing",
                 f"; withholding {', '.join(f.name for f in self.missing)}"
                 if self.missing else "")
        # One event wakes this loop: a new snapshot for this proxy (the cache sets it), a
        # message from the proxy, or the end of the stream (the reader sets it).
        wake = srv.cache.subscribe(key)
        for k in keys[1:]:
            srv.cache.subscribe(k, wake)
        reader = asyncio.get_running_loop().create_task(self._read_loop(key, wake))
        cancelled = False
        await self._presence(keys, True, "connected")  # (queued: no store write awaited)
        try:
            current = self._current()
            if current is not None and hello.last_version == current.version:
                self.acked = current  # it already runs this (from its disk cache)
                self.inflight_parts = self.node.parts()
                self._acked(current)
                self._ask_stats()
            loop = asyncio.get_running_loop()
            next_ping = loop.time() + srv.ping_interval
            while not self.closed:
                wake.clear()
                await self._maybe_push(key)
                if not wake.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(next_ping):
                            await wake.wait()
                if loop.time() >= next_ping and not self.closed:
                    self.send(Ping())
                    next_ping = loop.time() + srv.ping_interval
        except asyncio.CancelledError:
            cancelled = True  # this control plane stops: the proxy reconnects elsewhere
            raise
        finally:
            srv.live.discard(self)
            for k in keys:
                srv.cache.unsubscribe(k, wake)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            if not cancelled:
                self.writer.close()  # (a lost peer: nothing more is written to it)
                await self._presence(keys, False, self.end_reason)

    async def _presence(self, keys: list[ProxyKey], connected: bool, reason: str) -> None:
        hook = self.server.on_presence
        if hook is None:
            return
        try:
            await hook(keys, connected, reason, self.session_id)
        except Exception:
            log.exception("proxy %s: cannot record that it %s", workload_name(keys[0]),
                          "connected" if connected else "disconnected")

    def _pending(self, key: ProxyKey) -> ProxyConfig | None:
        """The snapshot to push now, if any."""
        if self.inflight is not None:
            return None
        current = self._current()
        if current is None or current.version == self.rejected or (
                self.acked is not None and self.acked.version == current.version):
            return None
        return current

    async def _maybe_push(self, key: ProxyKey) -> None:
        srv = self.server
        if self._pending(key) is None:
            return
        async with srv.push_slots:
            current = self._pending(key)  # the newest, now that it is our turn
            if current is None:
                return
            wire = srv.cache.wire
            if self.missing:  # an older proxy: frames of its own (see wire.py)
                frame = (withheld_snapshot_frame(current, self.missing) if self.acked is None
                         else withheld_delta_frame(self.acked, current, self.missing,
                                                   self.units))
            else:
                frame = (wire.snapshot_frame(current) if self.acked is None
                         else wire.delta_frame(self.acked, current, self.units))
            if srv.tls is None:
                self.writer.writelines(frame)
            self.inflight = current
            self.inflight_parts = self.node.parts()
            for st, part in self._by_part():
                st.sent_version = part.version
                st.pushes += 1
            if srv.tls is not None:  # paced: see accept.write_paced
                await write_paced(self.writer, frame, srv.drain_timeout)
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(srv.drain_timeout):
                    await self.writer.drain()

    def _current(self) -> ProxyConfig | None:
        """The snapshot this proxy should run: its workload's, or the merge of its node's."""
        try:
            cfg = self.node.current(self.server.cache.get)
        except NodeError as exc:
            if str(exc) != self._node_error:
                log.warning("proxy %s: %s", workload_name(self.node.keys[0]), exc)
            self._node_error = str(exc)
            return None
        self._node_error = ""
        return cfg

    def _by_part(self) -> list[tuple[ProxyStatus, ProxyConfig]]:
        """Each workload's status with its part of the snapshot in flight (or just ACKed)."""
        return list(zip(self.node_statuses, self.inflight_parts, strict=False))

    def _acked(self, cfg: ProxyConfig) -> None:
        """The proxy runs `cfg`: each workload's status gets its own part's version."""
        now = time.time()  # noqa: TID251
        for st, part in self._by_part():
            st.acked_version, st.acked_at, st.running = part.version, now, cfg

    def _handle(self, key: ProxyKey, msg: Message) -> None:
        st = self.st
        assert st is not None
        if isinstance(msg, Ping):
            self.send(Pong())
        elif isinstance(msg, Ack):
            self._ask_stats()
            if self.inflight is not None and msg.version == self.inflight.version:
                self.acked = self.inflight
                self.inflight = None
                self._acked(self.acked)
                acks = [((s.namespace, s.name), part.version) for s, part in self._by_part()]
            else:
                st.acked_version = shown(msg.version)
                st.acked_at = time.time()  # noqa: TID251
                acks = [(key, st.acked_version)]
            if self.server.on_ack is not None:
                for k, v in acks:
                    self.server.on_ack(k, v)
        elif isinstance(msg, Nack):
            # What the proxy says is kept bounded and escaped (reported.py), and the same
            # NACK again is not logged again.
            version, reason = shown(msg.version), shown(msg.reason, SHOWN_REASON)
            if (version, reason) != (st.nack_version, st.nack_reason):
                log.warning("proxy %s/%s rejected version %s: %s", key[0], key[1], version,
                            reason)
            st.nack_version, st.nack_reason = version, reason
            st.nack_paths = shown_list(msg.paths)
            if self.inflight is not None and msg.version == self.inflight.version:
                # Never resend a rejected version; the next change is diffed against the
                # last good one (or sent whole if there is none).
                self.rejected = msg.version
                self.inflight = None
        elif isinstance(msg, Pong):
            pass
        elif isinstance(msg, Csr):
            self._renew(msg)
        elif isinstance(msg, TrustAck):
            for s in self.node_statuses:
                s.trust_bundle = shown(msg.id)
        elif isinstance(msg, StatsReport):
            self.stats_warned = take_report(self.server.stats, self.node_statuses, msg,
                                            self.stats_warned)

    def _ask_stats(self) -> None:
        ask, self.stats_ask = self.stats_ask, None
        if ask is not None:
            self.send(ask)

    def send_trust(self) -> None:
        """The CA's trust bundle (and a renewal request, mid-rotation), to a proxy that takes
        `TrustUpdate`."""
        adm, st = self.server.admission, self.st
        if adm is not None and st is not None and st.trust_updates and not self.closed:
            update = update_for(adm.state, *self.node_statuses)
            if update.renew or update.id != st.trust_bundle:  # else it holds this already
                self.send(update)

    def _admitted_by_key(self) -> dict[ProxyKey, Admitted]:
        """Each fronted workload's admission, the hello's own first (empty without a CA)."""
        if self.admitted is None:
            return {}
        return {(a.namespace, a.workload): a for a in self.admitted.all()}

    def _renew(self, msg: Csr) -> None:
        """Sign a renewal CSR for the identity this stream was admitted as (for a node, the
        one of the workload the CSR names); a refused CSR ends the stream with the reason
        (the proxy keeps its current certificate)."""
        admission = self.server.admission
        if admission is None or self.admitted is None:
            self.send(Error(reason="this control plane issues no certificates"))
            self.writer.close()
            self.closed = True
            return
        loop_now = asyncio.get_running_loop().time()
        if self.renewals is None:
            self.renewals = RenewalBudget(len(self.admitted.all()),
                                          admission.cert_ttl.total_seconds(), loop_now)
        if not self.renewals.take(loop_now):
            log.warning("proxy %s/%s: renewal refused: too many certificate requests on one "
                        "stream; stream closed", self.admitted.namespace,
                        self.admitted.workload)
            self.send(Error(reason="renewal refused: too many certificate requests on this "
                                   "stream; reconnect and renew at half-life"))
            self.writer.close()
            self.closed = True
            return
        who = self.admitted
        if msg.workload:
            ns, _, name = msg.workload.partition("/")
            found = self._admitted_by_key().get((ns, name))
            if found is None or found is self.admitted:
                self.send(Error(reason=f"renewal for {msg.workload!r}: not a further workload "
                                       f"this stream was admitted for"))
                self.writer.close()
                self.closed = True
                return
            who = found
        try:
            cert = admission.sign(msg.csr, who.identity, who.workload)
            record_signed([s for s in self.node_statuses
                           if (s.namespace, s.name) == (who.namespace, who.workload)],
                          cert, admission.state)
            self.send(cert if who is self.admitted else msgspec.structs.replace(
                cert, workload=msg.workload))
        except CsrError as exc:
            log.warning("proxy %s/%s: renewal refused: %s", who.namespace, who.workload, exc)
            self.send(Error(reason=str(exc)))
            self.writer.close()
            self.closed = True
