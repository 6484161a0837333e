"""The proxy process's data plane: binds listeners, swaps snapshots, drains.

`ProxyServer.apply(cfg)` is the only way configuration changes, whether it came from a file,
SIGHUP, or (later) the control plane's push.  It works in two phases:

* **prepare** builds every runtime object of the snapshot that changed (routers, cluster
  runtimes, listener contexts, TLS contexts: `tulle.dataplane.runtime.build` keeps the
  unchanged ones) and every new listening socket, with accepting *not yet started*.
  Anything that can fail fails here (a port in use, an unreadable certificate, a protocol with
  no driver); then everything prepared is closed, `ApplyError` is raised and the previous
  snapshot stays in force, untouched.
* **commit** cannot fail: it moves pointers (clusters, listener contexts), swaps endpoint lists
  of clusters whose endpoints alone changed, retires what left the config, and starts
  accepting on the new sockets.

Sockets are identified by address and port.  A listener whose address and port are unchanged
keeps its socket (each of its sockets, when it serves more than one address: ADR 0088,
`listeners/sockets.py`): if nothing that selects the protocol driver changed (protocol, mode,
TLS) it keeps its server and its connections, and only its context pointer moves; otherwise a
new server accepts on a duplicate of the same socket and the old one's connections drain,
after a short grace (`SWAP_DRAIN_GRACE`).  The port is never unbound during a swap, so no
client is refused.  Connections pick up the new context at
their next request; in-flight exchanges finish on the snapshot they started with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tulle.dataplane.listeners import sockets
from tulle.dataplane.listeners.admission import readmit
from tulle.dataplane.listeners.factory import protocol_factory
from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.listeners.listener_context import ListenerContext
from tulle.dataplane.listeners.orphans import (
    close_removed_relays,
    close_unadmitted_relays,
    drain_orphans,
    recheck_relays,
)
from tulle.dataplane.overload import OverloadGuard
from tulle.dataplane.runtime.build import Prepared, SnapshotBuilder
from tulle.dataplane.runtime.tls import ServerRef, TLSContexts
from tulle.dataplane.telemetry.logs_runtime import close_loggers
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.telemetry.tap import TapHub
from tulle.dataplane.upstream.cluster import ClusterManager, run_sweeper
from tulle.dataplane.upstream.health.manager import HealthManager
from tulle.proxyconfig.model import Listener, ProxyConfig

if TYPE_CHECKING:
    from tulle.dataplane.dns.server import DnsPlan, DnsService

log = logging.getLogger("tulle.proxy")

BACKLOG = 4096
SWAP_DRAIN_GRACE = 0.25
"""Seconds a swapped-out listener's connections keep serving before the idle ones close."""


def _drain_handle(handle: ListenerHandle) -> None:
    """Drain what the handle holds when the grace ends, not what it held when it began: a
    connection whose protocol was detected meanwhile is its driver's by now."""
    for conn in list(handle.connections):
        conn.start_drain()


def _readmit(changed: list[tuple[ListenerHandle, ListenerContext, ListenerContext | None]],
             ) -> None:
    """At the swap: each open connection of a listener whose context changed (from the third
    element, None for a replaced listener), or of a replaced listener (against its
    successor's), that the listener's new admission refuses -- its `sources`, a refusing
    destination -- is ended (`listeners/admission.py`, ADR 0127).  Logged once per
    listener."""
    for handle, ctx, before in changed:
        try:
            ended = readmit(handle, ctx, before)
        except Exception:  # the commit cannot fail; a bug here is loud, never half a swap
            log.exception("listener %s: deciding its open connections again failed",
                          handle.name)
            continue
        if ended:
            log.info("listener %s: %d open connection(s) the new config no longer admits "
                     "ended (%s): relays and tunnels reset, HTTP connections closed or drained "
                     "after the request in flight", handle.name, sum(ended.values()),
                     ", ".join(f"{why} {n}" for why, n in sorted(ended.items())))


def _recheck(pairs: list[tuple[ListenerHandle, ListenerContext]]) -> None:
    """At the swap: each open relay of a listener whose context changed, or of a replaced
    listener (against its successor's), decided again by the new authorization
    (`listeners/orphans.py`, ADR 0117)."""
    for handle, ctx in pairs:
        try:
            n = recheck_relays(handle, ctx)
        except Exception:  # the commit cannot fail; a bug here is loud, never half a swap
            log.exception("listener %s: rechecking its open opaque streams failed", handle.name)
            continue
        if n:
            log.info("listener %s: %d opaque stream(s) the new config refuses closed (revoked)",
                     handle.name, n)


def _drain_orphans(handles: list[ListenerHandle]) -> None:
    """`listeners/orphans.py`, against each handle's context in force when the grace ends."""
    for handle in handles:
        if n := drain_orphans(handle, handle.ctx):
            log.info("listener %s: %d connection(s) whose filter chain or destination left the "
                     "config drained", handle.name, n)


def _settle_replaced(server: ProxyServer, handles: list[ListenerHandle]) -> None:
    """After the grace: each replaced or removed listener's opaque relays, against the
    listener of the same name in force now (`listeners/orphans.py`): those its successor
    leaves no way in, and all of a listener that has none, are closed."""
    for old in handles:
        successor = server.listeners.get(old.name)
        if successor is None:
            if n := close_removed_relays(old):
                log.info("listener %s: %d opaque stream(s) of the removed listener closed",
                         old.name, n)
        elif n := close_unadmitted_relays(old, successor.ctx):
            log.info("listener %s: %d opaque stream(s) its new config has no way in for "
                     "closed", old.name, n)


class MeshDns:
    """The mesh DNS resolver of the proxy, its module (table, resolver, forwarder, codec)
    imported only when a config first has a `dns` section: a proxy without one pays nothing
    for it in memory (ADR 0068).  Its metric family appears with it."""

    def __init__(self, metrics: ProxyMetrics) -> None:
        self.metrics = metrics
        self.service: DnsService | None = None

    @property
    def port(self) -> int:
        """The port bound (useful with port 0); 0 when no resolver runs."""
        return self.service.port if self.service is not None else 0

    @property
    def addresses(self) -> list[str]:
        """The addresses it answers on (ADR 0088); empty when no resolver runs."""
        return self.service.addresses if self.service is not None else []

    async def prepare(self, cfg: ProxyConfig) -> DnsPlan | None:
        """A plan for `cfg`'s `dns` section; None when there is none and never was."""
        if self.service is None:
            if cfg.dns is None:
                return None
            from tulle.dataplane.dns.server import DnsService

            self.service = DnsService(self.metrics)
        from tulle.dataplane.dns.server import DnsError

        try:
            return await self.service.prepare(cfg)
        except DnsError as exc:
            raise ApplyError(str(exc)) from exc

    async def commit(self, plan: DnsPlan) -> None:
        if self.service is not None:
            await self.service.commit(plan)

    def close(self) -> None:
        if self.service is not None:
            self.service.close()


class ApplyError(Exception):
    """A snapshot validated but could not be put in force; the previous one still is."""


def _socket_key(cfg: Listener) -> tuple[str, int]:
    return (cfg.address, cfg.port)


def _serving_key(cfg: Listener) -> tuple[object, ...]:
    """What the accepted connections' driver is chosen by; a change needs a new server."""
    return (cfg.protocol, cfg.mode, cfg.tls, bool(cfg.filter_chains))


@dataclass
class _Plan:
    """A prepared snapshot: everything built, nothing in force yet."""

    cfg: ProxyConfig
    built: Prepared
    handles: dict[str, ListenerHandle] = field(default_factory=dict)
    kept: list[tuple[ListenerHandle, ListenerContext]] = field(default_factory=list)
    fresh: list[ListenerHandle] = field(default_factory=list)
    ports: dict[ListenerHandle, int] = field(default_factory=dict)
    taken: set[int] = field(default_factory=set)
    """Descriptors of running sockets already handed to a listener of this plan."""

    def discard(self) -> None:
        """Close every server the plan created (never started accepting)."""
        for h in self.fresh:
            for s in h.servers:
                s.close()


class ProxyServer:
    def __init__(self, metrics: ProxyMetrics | None = None) -> None:
        self.metrics = metrics or ProxyMetrics()
        self.config: ProxyConfig | None = None
        self.tls = TLSContexts()
        """SSL contexts shared per distinct TLS config (clusters and listeners)."""
        self.clusters = ClusterManager(self.metrics, self.tls)
        self.taps = TapHub()
        """Live taps (ADR 0056): started by the agent, seen by every request's record."""
        self.runtime = SnapshotBuilder(self.metrics, self.clusters, self.taps)
        self.health = HealthManager(self.clusters, self.metrics)
        """Outlier detection and active health checks of the clusters in force."""
        """The runtime objects in force, and the incremental build of the next snapshot."""
        self.overload = OverloadGuard(self.metrics)
        """Connection caps and overload state shared by every listener (admin excluded)."""
        self.listeners: dict[str, ListenerHandle] = {}
        self.retired: set[ListenerHandle] = set()
        """Listeners that left the config (or were replaced) and still have connections."""
        self.draining = False
        self._ports: dict[ListenerHandle, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._idle = asyncio.Event()
        self.on_applied: list[Callable[[ProxyConfig], None]] = [self.taps.configure]
        self.dns = MeshDns(self.metrics)
        """The mesh DNS resolver (`ProxyConfig.dns`, ADR 0042)."""

    # -- configuration -------------------------------------------------------------------

    async def apply(self, cfg: ProxyConfig) -> None:
        """Put `cfg` in force atomically, or raise ApplyError and change nothing."""
        async with self._lock:
            if self.draining:
                raise ApplyError("the proxy is draining")
            plan = await self._prepare(cfg)
            try:
                dns_plan = await self._prepare_dns(cfg)
            except BaseException:
                plan.discard()
                raise
            if self.draining:  # SIGTERM arrived while sockets were being bound
                plan.discard()
                if dns_plan is not None:
                    dns_plan.discard()
                raise ApplyError("the proxy is draining")
            self._commit(plan)
            if dns_plan is not None:
                await self.dns.commit(dns_plan)
            for h in plan.fresh:
                for s in h.servers:
                    await s.start_serving()
        for cb in self.on_applied:
            cb(cfg)
        n = plan.built.counts
        log.info("config version %s in force: %d listeners, %d clusters (built: %d routers, "
                 "%d clusters, %d listener contexts; %d clusters changed endpoints only)",
                 cfg.version, len(cfg.listeners), len(cfg.clusters), n.routers_built,
                 n.clusters_built, n.contexts_built, n.clusters_endpoints_changed)

    async def _prepare(self, cfg: ProxyConfig) -> _Plan:
        try:
            built = self.runtime.prepare(cfg)
        except Exception as exc:  # a bad certificate, an unresolvable value: nothing changed
            raise ApplyError(f"cannot build the snapshot: {type(exc).__name__}: {exc}") from exc
        contexts = built.contexts
        plan = _Plan(cfg, built)
        old = self.listeners
        for name, ctx in contexts.items():  # state that outlives a swap (network filter counts)
            if name in old:
                ctx.follow(old[name].ctx)
        new_by_name = {lc.name: lc for lc in cfg.listeners}

        def donor_for(lc: Listener) -> ListenerHandle | None:
            """The old listener whose socket `lc` can take over, if any."""
            same = old.get(lc.name)
            if same is not None and _socket_key(same.ctx.cfg) == _socket_key(lc):
                return same
            if not lc.port:
                return None
            for name, h in old.items():
                if _socket_key(h.ctx.cfg) != _socket_key(lc) or h in plan.ports:
                    continue
                successor = new_by_name.get(name)
                if successor is None or _socket_key(successor) != _socket_key(lc):
                    return h
            return None

        try:
            for lc in cfg.listeners:
                ctx = contexts[lc.name]
                donor = donor_for(lc)
                if (donor is not None and donor.name == lc.name
                        and _serving_key(donor.ctx.cfg) == _serving_key(lc)
                        and donor.ctx.cfg.additional_addresses == lc.additional_addresses):
                    plan.kept.append((donor, ctx))
                    plan.handles[lc.name] = donor
                    plan.ports[donor] = self._ports[donor]
                    continue
                handle = ListenerHandle(
                    lc.name, ctx,
                    m_active=self.metrics.connections_active.labels(lc.name),
                    m_total=self.metrics.connections_total.labels(lc.name),
                    guard=self.overload)
                plan.fresh.append(handle)
                plan.handles[lc.name] = handle
                await self._serve(handle, lc, donor, plan)
                if donor is not None:
                    plan.ports[donor] = plan.ports[handle]  # claimed: no other listener takes it
        except BaseException:
            plan.discard()
            raise
        return plan

    async def _prepare_dns(self, cfg: ProxyConfig) -> DnsPlan | None:
        try:
            return await self.dns.prepare(cfg)
        except (OSError, ValueError) as exc:
            raise ApplyError(str(exc)) from exc

    async def _serve(self, handle: ListenerHandle, lc: Listener, donor: ListenerHandle | None,
                     plan: _Plan) -> None:
        """Create `handle`'s server, not yet accepting: on `donor`'s socket or a fresh bind."""
        where = f"listener {lc.name} ({lc.address}:{lc.port})"
        ref: ServerRef | None = None
        try:
            if lc.tls is not None and not lc.filter_chains:  # with chains: the default chain's
                ref = self.tls.server_ref(lc.tls)
            factory = protocol_factory(handle, ref)
        except (OSError, ValueError, NotImplementedError) as exc:  # ssl.SSLError is an OSError
            raise ApplyError(f"{where}: {exc}") from exc
        port = lc.port
        for address in sockets.addresses(lc):  # the primary first: port 0 picks the port
            given = self._held(address, port, donor, plan)
            if given is not None and not sockets.v6only(lc, given):
                raise ApplyError(f"listener {lc.name}: [{address}]:{port} is bound taking IPv4 "
                                 "as well or not, and a bound socket cannot change that: remove "
                                 "the listener in one snapshot and add it in the next")
            try:
                sock = (sockets.dup(given) if given is not None
                        else sockets.bind(lc, address, port, BACKLOG))
            except sockets.BindError as exc:
                raise ApplyError(str(exc)) from exc
            if sock is None:
                continue  # an additional address of a family this namespace lacks (logged)
            try:
                server = await asyncio.get_running_loop().create_server(
                    factory, sock=sock, backlog=BACKLOG, start_serving=False)  # TLS: TLSAccept
            except (OSError, ValueError) as exc:
                sock.close()
                raise ApplyError(f"{where}: {exc}") from exc
            handle.servers.append(server)
            if address == lc.address:
                port = int(sock.getsockname()[1])
                plan.ports[handle] = port
        handle.tls_ref = ref

    def _held(self, address: str, port: int, donor: ListenerHandle | None, plan: _Plan) -> Any:
        """The listening socket on `address`:`port` that a listener of the snapshot in force
        holds, to be handed over: the donor's first, else any listener's (an address that
        moved between listeners, or stayed while the primary changed) -- never one a listener
        keeps in the new snapshot, nor one already handed to another listener of it (two
        `reuse_port` listeners on one address each bind their own)."""
        kept = {id(h) for h, _ in plan.kept}
        owners = [donor] if donor is not None else []
        if port:  # port 0: only the same listener's own socket is its
            owners += [h for h in self.listeners.values() if h is not donor]
        for h in owners:
            if id(h) in kept:
                continue
            held = sockets.listening_socket(h.servers, address, port)
            if held is not None and held.fileno() not in plan.taken:
                plan.taken.add(held.fileno())
                return held
        return None

    def _commit(self, plan: _Plan) -> None:
        """Put a prepared plan in force.  Nothing here may fail."""
        for exporter in self.runtime.commit(plan.built):
            self._spawn(exporter.close())  # a tracing change: the old exporter flushes
        retired, self.runtime.retired_loggers = self.runtime.retired_loggers, []
        if retired:
            self._spawn(close_loggers(retired))
        orphaned = []
        before: list[ListenerContext] = []
        for handle, ctx in plan.kept:
            if handle.ctx is not ctx:
                orphaned.append(handle)
                before.append(handle.ctx)
            handle.ctx = ctx
        for name, old in self.listeners.items():
            if plan.handles.get(name) is not old:
                self._retire(old)
        self.listeners = plan.handles
        self._ports = {h: plan.ports[h] for h in plan.handles.values()}
        self.config = plan.cfg
        info = self.metrics.config_info
        info.children.clear()  # one series: the version in force
        info.labels(plan.cfg.version).value = 1
        self.health.sync()
        self.overload.configure(plan.cfg.settings)
        # Open connections follow the config (ADRs 0117, 0127): those of a listener whose
        # context changed, and of replaced listeners (also by earlier swaps, still draining)
        # against the successor in force from now on, are decided again by its admission and
        # (relays) its authorization now; after the grace, relays with no way in under it,
        # and a removed listener's, close.
        replaced = [h for h in self.retired if h.connections]
        changed = [*((h, h.ctx, b) for h, b in zip(orphaned, before, strict=True)),
                   *((h, plan.handles[h.name].ctx, None) for h in replaced
                     if h.name in plan.handles)]
        # First what the listener's own admission refuses now (ADR 0127), then the policies.
        _readmit(changed)
        _recheck([(h, ctx) for h, ctx, _ in changed])
        if replaced:
            asyncio.get_running_loop().call_later(SWAP_DRAIN_GRACE, _settle_replaced, self,
                                                  replaced)
        if orphaned:
            # Connections whose way in left the config are drained after the same grace as a
            # swapped-out listener's (`_retire`): a request already on its way gets the new
            # config's answer (`404 no route`, `Connection: close`), not a cut-off.
            asyncio.get_running_loop().call_later(SWAP_DRAIN_GRACE, _drain_orphans, orphaned)
        if len(self.tls):
            self.tls.retain([*(h.tls_ref.ctx for h in self.listeners.values() if h.tls_ref),
                             *(c for h in self.listeners.values() for c in h.ctx.ssl_contexts()),
                             *(c.ssl_context for c in self.clusters.clusters.values())])
        if self._sweeper is None:
            self._sweeper = run_sweeper(self.clusters)
            self._spawn(self._deadline_sweeper())
            self._spawn(self.overload.run())

    def _retire(self, handle: ListenerHandle) -> None:
        """A listener left the config (or is served anew): stop accepting, drain connections.

        Not at once: a connection accepted an instant before the swap may have its first
        request on the way, not read yet, and closing it would answer that request with EOF
        (a client gets "empty reply", never a retry).  For `SWAP_DRAIN_GRACE` the connections
        keep serving, each closing after its response (the handle is draining); then the
        idle ones close.  A proxy's own shutdown (`drain`) drains at once."""
        for s in handle.servers:
            s.close()
        handle.draining = True
        if handle.connections:
            self.retired.add(handle)
            handle.on_drained = lambda: self._retired_done(handle)
            asyncio.get_running_loop().call_later(SWAP_DRAIN_GRACE, _drain_handle, handle)

    def _retired_done(self, handle: ListenerHandle) -> None:
        self.retired.discard(handle)
        self._check_idle()

    def bound_port(self, name: str) -> int:
        """The port a listener actually bound (useful with port 0)."""
        return self._ports[self.listeners[name]]

    # -- housekeeping --------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _all_handles(self) -> list[ListenerHandle]:
        return [*self.listeners.values(), *self.retired]

    def flush_telemetry(self) -> None:
        """Bring the golden TCP byte counters of live relays up to date (the admin calls it
        before rendering /metrics): O(open connections) per scrape, nothing per packet."""
        if self.runtime.golden is None:
            return
        for h in self._all_handles():
            for conn in h.connections:
                flush = getattr(conn, "flush_golden", None)
                if flush is not None:
                    flush()

    async def _deadline_sweeper(self) -> None:
        """Header and idle timeouts for all downstream connections, checked in one place.

        Each tick also tells how late the loop ran it: the event-loop lag (ADR 0086), a pause
        every request arriving meanwhile waited through before the proxy read it, which no
        request metric shows.  Measured here rather than by a timer of its own: a probe every
        250 ms cost an idle proxy four more wake-ups and +0.4 ms of CPU a second."""
        loop = asyncio.get_running_loop()
        lag = self.metrics.event_loop_lag.labels()
        while True:
            cfg = self.config
            tick = 1.0
            if cfg is not None:
                tick = max(0.01, min(1.0, cfg.settings.header_timeout_ms / 4000))
            # The wall clock: uvloop's `loop.time()` is when its iteration began.
            due = time.monotonic() + tick
            await asyncio.sleep(tick)
            lag.observe(max(0.0, time.monotonic() - due) * 1000)
            now = loop.time()
            for handle in self._all_handles():
                for conn in list(handle.connections):
                    d = conn.deadline
                    if d and d <= now:
                        conn.on_deadline(now)

    # -- lifecycle -----------------------------------------------------------------------

    def _check_idle(self) -> None:
        if self.draining and not any(h.connections for h in self._all_handles()):
            self._idle.set()

    async def keep_accepting(self, period: float, cut: asyncio.Event) -> bool:
        """Leaving, still serving (ADR 0113): for `period` seconds, or until `cut` is set,
        every listener keeps accepting and serving, `/ready` answers 503 and config is not
        taken, while the callers learn that this proxy left their endpoints.  Each HTTP/1
        response says `Connection: close` and closes its connection (idle ones stay: a
        caller's pool finds them open); HTTP/2 connections get a GOAWAY that lets every
        stream go on.  Callers move their pools off this proxy; `drain` then stops accepting.
        Skipped (False) with no period or no listener.  True: the period was served."""
        handles = self._all_handles()
        if period <= 0 or not any(h.servers for h in handles):
            return False
        self.draining = True
        for h in handles:
            h.draining = True
        for h in handles:
            for conn in list(h.connections):
                notice = getattr(conn, "notice_drain", None)
                if notice is not None:
                    notice()
        try:
            async with asyncio.timeout(period):
                await cut.wait()
        except TimeoutError:
            return True
        return False

    async def drain(self, timeout: float | None = None) -> bool:
        """Stop accepting, let in-flight requests finish, close idle connections.

        Returns True when every connection closed within `timeout` (default: the config's
        drain_timeout_ms); the rest are aborted.
        """
        self.draining = True
        self._idle.clear()  # (a retired listener that ended during `keep_accepting` set it)
        self.dns.close()
        if timeout is None:
            timeout = (self.config.settings.drain_timeout_ms / 1000) if self.config else 5.0
        handles = self._all_handles()
        for h in handles:
            for s in h.servers:
                s.close()
            h.draining = True
            h.on_drained = self._check_idle
        for h in handles:
            for conn in list(h.connections):
                conn.start_drain()
        self._check_idle()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            pass
        clean = not any(h.connections for h in handles)
        for h in handles:
            for conn in list(h.connections):
                conn.abort()
        self.health.close()
        self.clusters.close()
        return clean

    async def close(self) -> None:
        self.dns.close()
        for exporter in self.runtime.tracing.close():
            await exporter.close()  # flushes the spans it holds (bounded by its timeout)
        await close_loggers(self.runtime.logs.all())
        for h in self._all_handles():
            for s in h.servers:
                s.close()
            for conn in list(h.connections):
                conn.abort()
        self.health.close()
        self.clusters.abort()
        for t in list(self._tasks):
            t.cancel()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        await asyncio.sleep(0)
