"""One connected proxy's side of the stream: hello and admission, the push loop, what the
proxy sends (ACK/NACK, pings, renewal CSRs, trust ACKs, traffic reports), and presence.

Kept apart from `server.py`, which accepts connections, holds them to the caps and counts what
it refuses, because a session's protocol is a job of its own; the server creates one
`ProxySession` per connection and reaches live sessions only through `send_trust` (and a new
session ends the older one of its workload through `replaced_by`).  The rules
(one push in flight, deltas against the last ACK, withheld features, admission first,
backpressure on replies, one stream per workload, a push nobody reads ends the stream) are
described in `server.py`'s docstring and ADRs 0011, 0018, 0028, 0045 and 0118.
"""


from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from typing import TYPE_CHECKING

import msgspec

from tulle.controlplane.ca.admission import AdmissionError, Admitted
from tulle.controlplane.push.accept import PushStalled, write_paced
from tulle.controlplane.push.cache import ProxyKey, ProxyStatus
from tulle.controlplane.push.negotiation import negotiation_error
from tulle.controlplane.push.node import NodeError, NodeSnapshots, workload_name
from tulle.controlplane.push.renewals import RenewalBudget, budget, renew
from tulle.controlplane.push.reported import SHOWN_REASON, shown, shown_list
from tulle.controlplane.push.stats import stats_request, take_report
from tulle.controlplane.push.trust import after_hello, update_for
from tulle.controlplane.push.wire import withheld_delta_frame, withheld_snapshot_frame
from tulle.controlplane.readiness import STARTING, first_config_rejected
from tulle.proxyconfig.delta import units_of
from tulle.proxyconfig.features import SERVING_ACK, Feature, refused_by, withheld_from
from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.stats import report_seconds
from tulle.proxyconfig.stream import (
    MAX_FRAME,
    Ack,
    Csr,
    Draining,
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
    TapEvents,
    TrustAck,
    encode,
)

if TYPE_CHECKING:
    from tulle.controlplane.push.server import PushServer


log = logging.getLogger("tulle.controlplane.push")


DRAINING = "draining: the proxy is shutting down"
"""The reason written with `Disconnected` when a proxy says `Draining` (the CLI's
`cli.proxy_state.DRAINING_REASON`, which a test holds equal)."""

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
        self.reports: set[asyncio.Task[None]] = set()
        """Presence reports made from the read loop (first ACK, first NACK), until queued."""
        self.draining: asyncio.Task[None] | None = None
        """The write of `DRAINING` into the store, once the proxy said `Draining`."""
        self.serving = True
        """Its workloads are endpoints for this session: at once for a proxy from before
        `serving-ack` or one whose hello names a version it runs; else from its first ACK
        (ADR 0116).  False before that, and for a proxy whose first snapshot it NACKed."""
        self.stats_period = 0.0
        """Seconds between the reports asked of this proxy (`stats_request`): when its next
        report is due, whatever its last one happened to cover."""
        self.wake: asyncio.Event | None = None
        """Set to wake the push loop (a new snapshot, a message, the end of the stream)."""

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
            try:
                self.admitted = await self._admit(first)
            except AdmissionError as exc:
                srv.unauthenticated(first, self.peer, str(exc))
                self.send(Error(reason=str(exc)))
                return
            except ValueError as exc:  # proven, but it says what it may not change
                srv.refused(first, self.peer, str(exc))
                self.send(Error(reason=str(exc)))
                return
            self.decoder.max_frame = MAX_FRAME
            self.hello_seen = True
            srv.said_hello()
            await self._session(first)
        finally:
            srv.holders.release(self.node.keys, self)
            for st in self.node_statuses:
                if st.session is self:  # (not when a newer stream of the proxy took over)
                    st.connected, st.session, st.draining = False, None, False

    async def _admit(self, hello: Hello) -> Admitted | None:
        """Admission (None without a CA) and registration of every workload the hello
        fronts, as one step: the registration is admission's last check, before any token
        is spent or certificate signed, so a hello it refuses burns no token.
        AdmissionError for a credential refused, ValueError for a registration refused."""
        admission = self.server.admission
        if admission is None:
            await self._register(hello, None)
            return None
        return await admission.admit(hello, lambda a: self._register(hello, a))

    async def _register(self, hello: Hello, admitted: Admitted | None) -> None:
        """`on_register` for each fronted workload, with who it was admitted as; ValueError
        when it refuses what the hello announces."""
        hook = self.server.on_register
        if hook is None:
            return
        by_key = {(a.namespace, a.workload): a for a in admitted.all()} if admitted else {}
        for x in (hello.workload, *hello.workloads):
            await hook(x, self.peer.rsplit(":", 1)[0], by_key.get((x.namespace, x.name)))

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
        for i, a in enumerate(self.admitted_by_key().values()):
            if a.issued is not None:  # before any snapshot: it may name the identity
                self.send(a.issued if i == 0 else msgspec.structs.replace(
                    a.issued, workload=f"{a.namespace}/{a.workload}"))
        self.node = NodeSnapshots(keys)
        self.missing = withheld_from(hello.features)
        self.units = units_of(hello.features)
        now = time.time()  # noqa: TID251 - wall-clock timestamps for display, not durations
        for k in keys:
            st = srv.status.get(k) or ProxyStatus(*k)
            srv.status[k] = st
            self.node_statuses.append(st)
            st.connected, st.peer, st.connected_since, st.last_seen = True, self.peer, now, now
            st.draining = False
            st.session = self
            st.control_plane = srv.instance
            st.protocol, st.features = hello.protocol, shown_list(hello.features)
            st.withheld, st.delta_units = self.missing, self.units
            st.refused = refused_by(hello.features)
            st.node = [workload_name(x) for x in keys] if len(keys) > 1 else []
        # A proxy that says its ACK means it serves joins the endpoints when it does: now if
        # its hello names a version it runs, else at its first ACK (ADR 0116).
        self.serving = SERVING_ACK not in hello.features or bool(hello.last_version)
        for st in self.node_statuses:
            st.serving = self.serving
        st = self.st = self.node_statuses[0]
        for older in srv.holders.take(keys, self):  # one stream per workload (ADR 0118)
            older.replaced_by(self)
        if srv.admission is not None:
            srv.live.add(self)
            update = after_hello(srv.admission.state, self.node_statuses, self.admitted, hello)
            if update is not None:
                self.send(update)
        self.stats_ask = stats_request(srv.stats, srv.stats_interval, hello.features)
        if self.stats_ask is not None:
            self.stats_period = report_seconds(self.stats_ask.interval_ms)
        if srv.taps is not None:  # live tap (ADR 0056), if the proxy takes it
            srv.taps.attach(self, fronted, hello.features)
        log.info("proxy %s/%s connected from %s (serving %r)%s", w.namespace, w.name, self.peer,
                 hello.last_version or "nothing",
                 f"; withholding {', '.join(f.name for f in self.missing)}"
                 if self.missing else "")
        # One event wakes this loop: a new snapshot for this proxy (the cache sets it), a
        # message from the proxy, or the end of the stream (the reader sets it).
        wake = self.wake = srv.cache.subscribe(key)
        for k in keys[1:]:
            srv.cache.subscribe(k, wake)
        reader = asyncio.get_running_loop().create_task(self._read_loop(key, wake))
        cancelled = False
        if self.serving:  # (queued: no store write awaited)
            await self._presence(keys, True, "connected")
        else:  # out of the endpoints (a previous session's Connected too) until it serves
            await self._presence(keys, False, STARTING, claim=True)
        # The version its hello says it runs (from its disk cache), until the first snapshot
        # this session has for it: the same version is taken as ACKed, not pushed again.  Not
        # only now: a control plane that has just started may still be compiling its first
        # snapshots on its worker thread while hellos are served (ADR 0133).
        resumed = hello.last_version
        try:
            loop = asyncio.get_running_loop()
            next_ping = loop.time() + srv.ping_interval
            while not self.closed:
                wake.clear()
                if resumed:
                    current = self._current()
                    if current is not None:
                        if current.version == resumed:
                            self.acked = current  # it already runs this
                            self.inflight_parts = self.node.parts()
                            self._acked(current)
                            self._ask_stats()
                        resumed = ""
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
            if srv.taps is not None:
                srv.taps.detach(self)
            for k in keys:
                srv.cache.unsubscribe(k, wake)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            for queued in [*self.reports, *([self.draining] if self.draining else [])]:
                # (their writes are queued before the end's)
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await queued
            if not cancelled:
                self.writer.close()  # (a lost peer: nothing more is written to it)
                # After `Draining`, the reason says the stream is gone: `draining` is for a
                # proxy still on it (`get workloads`), not one that exited or was killed.
                await self._presence(keys, False, self.end_reason if self.draining is None
                                     else f"{self.end_reason} (it was shutting down)")

    async def _presence(self, keys: list[ProxyKey], connected: bool, reason: str, *,
                        claim: bool = False) -> None:
        hook = self.server.on_presence
        if hook is None:
            return
        try:
            await hook(keys, connected, reason, self.session_id, claim=claim)
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
        slots = srv.push_slots
        await slots.acquire()
        held = True

        def give_back() -> None:  # at the end, or once the push took `stall_timeout`
            nonlocal held
            if held:
                held = False
                slots.release()

        # A slow push gives its slot back (it goes on, paced, outside the slots): a proxy
        # that reads slowly holds up no other's push for longer than that.
        late = asyncio.get_running_loop().call_later(srv.stall_timeout, give_back)
        try:
            current = self._pending(key)  # the newest, now that it is our turn
            if current is None or self.closed:
                return
            wire = srv.cache.wire
            if self.missing:  # an older proxy: frames of its own (see wire.py)
                frame = (withheld_snapshot_frame(current, self.missing) if self.acked is None
                         else withheld_delta_frame(self.acked, current, self.missing,
                                                   self.units))
            else:
                frame = (wire.snapshot_frame(current) if self.acked is None
                         else wire.delta_frame(self.acked, current, self.units))
            self.inflight = current
            self.inflight_parts = self.node.parts()
            for st, part in self._by_part():
                st.sent_version = part.version
                st.pushes += 1
            try:
                await write_paced(self.writer, frame, srv.stall_timeout)  # see accept.py
            except PushStalled as exc:
                self._stalled(current, exc)
            except ConnectionError:
                if not self.closed:  # (else: we aborted it, replaced)
                    raise
        finally:
            late.cancel()
            give_back()

    def _stalled(self, cfg: ProxyConfig, exc: PushStalled) -> None:
        """The proxy took nothing of a push for `stall_timeout` (it does not read): end the
        stream now instead of holding the rest of its frame until the liveness timeout (ADR
        0118).  A proxy that is alive reconnects and is sent what it needs."""
        if self.closed:  # (ended meanwhile: replaced, or the peer went away)
            return
        self.end_reason = (f"the proxy read nothing of its config for {exc.stall:g}s "
                           f"({exc.unsent} of {exc.size} bytes not taken)")
        self.server.stalled(self, cfg.version, exc)
        self._end()

    def replaced_by(self, newer: ProxySession) -> None:
        """A newer stream of a workload this one holds was admitted: this one ends (ADR
        0118), telling the peer why (if it still reads; a half-open stream's peer is gone)."""
        if self.closed:
            return
        w = workload_name(self.node.keys[0]) if self.node.keys else "?"
        self.end_reason = f"replaced by a newer stream of the workload from {newer.peer}"
        self.server.replaced(w, self.peer, newer.peer)
        with contextlib.suppress(Exception):
            self.send(Error(reason=f"this stream of {w} was replaced by a newer one (from "
                                   f"{newer.peer}); one stream per workload"))
        # Aborted, not closed: the old stream is usually half-open, and a clean close would
        # wait for a peer that never answers, keeping the connection (its TLS buffers) for
        # every stream a reconnect loop leaves behind.  What was written goes out first
        # (the kernel sends its queue before the FIN).
        self._end()

    def _end(self) -> None:
        """Abort the connection (nothing buffered for it is kept) and wake the push loop, so
        the session ends."""
        self.closed = True
        self.writer.transport.abort()
        if self.wake is not None:
            self.wake.set()

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
            self._serves()
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
                if not self.serving and self.draining is None:  # it runs nothing: stays out
                    self._report(False, first_config_rejected(version))
        elif isinstance(msg, Pong):
            pass
        elif isinstance(msg, Csr):
            renew(self, msg)
        elif isinstance(msg, TrustAck):
            for s in self.node_statuses:
                s.trust_bundle = shown(msg.id)
        elif isinstance(msg, StatsReport):
            self.stats_warned = take_report(self.server.stats, self.node_statuses, msg,
                                            self.stats_warned, self.stats_period)
        elif isinstance(msg, TapEvents) and self.server.taps is not None:
            self.server.taps.take(self, msg)
        elif isinstance(msg, Draining):
            self._drain()

    def _serves(self) -> None:
        """The proxy ACKed a config: it serves, so its workloads join their Services'
        endpoints if they were waiting for that (ADR 0116); not after `Draining`."""
        if self.serving or self.draining is not None:
            return
        self.serving = True
        for s in self.node_statuses:
            if s.session is self:
                s.serving = True
        log.info("proxy %s serves: into its Services' endpoints",
                 workload_name(self.node.keys[0]))
        self._report(True, "connected")

    def _report(self, connected: bool, reason: str) -> None:
        """A presence report from the read loop, queued in order (the hook only queues)."""
        task = asyncio.get_running_loop().create_task(
            self._presence(list(self.node.keys), connected, reason))
        self.reports.add(task)
        task.add_done_callback(self.reports.discard)

    def _drain(self) -> None:
        """The proxy is stopping and keeps the stream for its drain (ADR 0092): its workloads
        leave their Services' endpoints now, exactly as a closed stream takes them out (ADR
        0040).  The stream's own end later only rewrites the reason (the stored state is
        already this session's `Disconnected`).  Only the statuses this session still holds
        are marked: a newer stream of the workload may have taken them over (the store write
        is by session too)."""
        if self.draining is not None:
            return
        for s in self.node_statuses:
            if s.session is self:
                s.draining = True
        log.info("proxy %s is draining: out of its Services' endpoints",
                 workload_name(self.node.keys[0]))
        self.draining = asyncio.get_running_loop().create_task(
            self._presence(list(self.node.keys), False, DRAINING))

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
            if update.renew and self.admitted is not None:  # asked for: never refused
                budget(self).grant(len(self.admitted.all()))
            if update.renew or update.id != st.trust_bundle:  # else it holds this already
                self.send(update)

    def admitted_by_key(self) -> dict[ProxyKey, Admitted]:
        """Each fronted workload's admission, the hello's own first (empty without a CA)."""
        if self.admitted is None:
            return {}
        return {(a.namespace, a.workload): a for a in self.admitted.all()}
