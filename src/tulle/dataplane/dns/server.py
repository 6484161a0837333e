"""The resolver's UDP and TCP edge, and how a `dns` section is put in force.

`DnsService.prepare(cfg)` does everything that can fail (binding UDP and TCP on the port,
building the name table, reading resolv.conf) and `commit` cannot fail, so the proxy's apply
stays atomic.  Sockets are kept across snapshots while address and port are unchanged; only
the `DnsState` pointer moves, and queries in flight finish on the state they started with.

Bounds (each one an attack the tests replay): forwarded queries in flight (`max_inflight`,
UDP past it dropped, TCP past it SERVFAIL); UDP answers not sent while the socket's write
buffer is full (dropped); client TCP connections (`max_tcp_connections`), their message size
(`max_tcp_message_bytes`, a larger prefix closes the connection), their idle time, 16
forwarded queries pending per connection, and a client not reading its answers (for both,
reading pauses and the queries one read already brought wait in the connection's buffer
until a forward ends or the client reads).  An upstream that is this resolver itself is
skipped (it would loop).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path

from tulle.dataplane.dns import resolver
from tulle.dataplane.dns.forward import forward, servfail
from tulle.dataplane.dns.table import NameTable, build
from tulle.dataplane.listeners.sockets import family_unavailable
from tulle.dataplane.telemetry.metrics import CounterChild, ProxyMetrics
from tulle.proxyconfig.address import hostport, same_address, unmapped
from tulle.proxyconfig.dns import upstream_address
from tulle.proxyconfig.model import DNS, ProxyConfig

log = logging.getLogger("tulle.proxy.dns")

MAX_UDP_WRITE_BUFFER = 256 * 1024
PENDING_PER_CONNECTION = 16


def resolv_conf_upstreams(path: str) -> tuple[tuple[str, int], ...]:
    """The `nameserver` lines of a resolv.conf; unreadable or invalid lines are skipped (and
    logged), as the C library does."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        log.warning("dns: cannot read %s (%s): forwarded queries get SERVFAIL", path,
                    exc.strerror or exc)
        return ()
    out: list[tuple[str, int]] = []
    for line in text.splitlines()[:1000]:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                out.append(upstream_address(parts[1].split("%")[0]))
            except ValueError:
                log.warning("dns: %s: skipping nameserver %r", path, parts[1][:64])
    return tuple(out[:8])


class _Counters:
    def __init__(self, metrics: ProxyMetrics) -> None:
        fam = metrics.registry.counter(
            "tulle_proxy_dns_queries_total", "Queries to the mesh DNS resolver, by result",
            ("protocol", "result"))
        self.by: dict[tuple[str, str], CounterChild] = {
            (p, r): fam.labels(p, r) for p in ("udp", "tcp") for r in resolver.RESULTS}


@dataclass
class DnsState:
    """What one `dns` section runs: the table and the bounds (swapped whole)."""

    cfg: DNS
    table: NameTable
    upstreams: tuple[tuple[str, int], ...]
    by_source: dict[str, NameTable] = field(default_factory=dict)
    """`DNS.clients`: the table of the namespace of each client address (a node agent's pods);
    any other source takes `table`."""
    timeout: float = field(init=False)

    def __post_init__(self) -> None:
        self.timeout = self.cfg.upstream_timeout_ms / 1000


def _by_source(d: DNS) -> dict[str, NameTable]:
    """One table per namespace the clients name, keyed by each client's address as the
    socket reports it (the canonical text form).  An IPv4 client has a second key, its
    IPv4-mapped form, which a dual-stack socket (`::` alone) reports; a client written in
    the mapped form is that IPv4 client."""
    tables: dict[str, NameTable] = {}
    out: dict[str, NameTable] = {}
    for c in d.clients:
        t = tables.get(c.namespace)
        if t is None:
            t = tables[c.namespace] = build(d, c.namespace)
        ip = ipaddress.ip_address(unmapped(c.address))
        out[str(ip)] = t
        if ip.version == 4:
            out[f"::ffff:{ip}"] = t
    return out


class _Shared:
    """State the UDP and TCP sides share: the state pointer, counters, in-flight forwards."""

    def __init__(self, state: DnsState, counters: _Counters) -> None:
        self.state = state
        self.counters = counters
        self.inflight = 0
        self.tcp_connections = 0
        self.tasks: set[asyncio.Task[None]] = set()

    def count(self, proto: str, result: str) -> None:
        self.counters.by[(proto, result)].value += 1

    def spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def _buffered(t: asyncio.DatagramTransport) -> int:
    """Bytes the transport holds because the socket would block (both loops have it)."""
    size: int = t.get_write_buffer_size()  # type: ignore[attr-defined]
    return size


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, shared: _Shared) -> None:
        self.shared = shared
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def _send(self, reply: bytes, addr: tuple[str, int], result: str) -> None:
        t = self.transport
        if t is None or t.is_closing() or _buffered(t) > MAX_UDP_WRITE_BUFFER:
            self.shared.count("udp", resolver.DROPPED)
            return
        t.sendto(reply, addr)
        self.shared.count("udp", result)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        sh = self.shared
        st = sh.state
        d = resolver.decide(data, st.by_source.get(addr[0], st.table) if st.by_source
                            else st.table, udp=True)
        if d.reply is not None:
            self._send(d.reply, addr, d.result)
        elif d.query is None:
            sh.count("udp", d.result)
        elif sh.inflight >= st.cfg.max_inflight:
            sh.count("udp", resolver.DROPPED)
        else:
            sh.inflight += 1
            sh.spawn(self._forward(data, d, addr, st))

    async def _forward(self, data: bytes, d: resolver.Decision, addr: tuple[str, int],
                       st: DnsState) -> None:
        try:
            reply = await forward(data, st.upstreams, st.timeout, tcp=False)
        finally:
            self.shared.inflight -= 1
        assert d.query is not None
        if reply is None:
            self._send(servfail(d.query), addr, resolver.SERVFAIL)
        else:
            self._send(reply, addr, resolver.FORWARDED)

    def error_received(self, exc: Exception) -> None:  # ICMP errors for a sendto: harmless
        pass


class _Tcp(asyncio.Protocol):
    def __init__(self, shared: _Shared) -> None:
        self.shared = shared
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.pending = 0
        self.idle: asyncio.TimerHandle | None = None
        self.counted = False
        self.write_blocked = False
        """The client does not read its answers: reading stops until it does."""
        self.peer = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        sh = self.shared
        if sh.tcp_connections >= sh.state.cfg.max_tcp_connections:
            sh.count("tcp", resolver.DROPPED)
            self.transport.abort()  # type: ignore[union-attr]
            return
        sh.tcp_connections += 1
        self.counted = True
        self._arm()

    def _arm(self) -> None:
        if self.idle is not None:
            self.idle.cancel()
        loop = asyncio.get_running_loop()
        self.idle = loop.call_later(self.shared.state.cfg.tcp_idle_timeout_ms / 1000,
                                    self._on_idle)

    def _on_idle(self) -> None:
        if self.transport is not None and self.pending == 0:
            self.transport.close()
        else:
            self._arm()

    def pause_writing(self) -> None:
        self.write_blocked = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_blocked = False
        self._resume()

    def _resume(self) -> None:
        """A reason to stop has gone (a forward completed, the client read its answers):
        take the queries already buffered, then read again unless one of them stopped it."""
        self._drain()
        if (self.transport is not None and self.pending < PENDING_PER_CONNECTION
                and not self.write_blocked):
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.idle is not None:
            self.idle.cancel()
        if self.counted:
            self.shared.tcp_connections -= 1
            self.counted = False
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._drain()

    def _drain(self) -> None:
        """Handle the complete queries in the buffer, stopping at the bound (16 forwards
        pending) or a client that does not read its answers: reading pauses then, and what
        one read already brought stays buffered until `_resume`.  Without that stop, one
        write of 100 queries would start 100 forwards and take the whole `max_inflight`."""
        sh = self.shared
        st = sh.state
        while (len(self.buf) >= 2 and self.transport is not None
               and self.pending < PENDING_PER_CONNECTION and not self.write_blocked):
            n = int.from_bytes(self.buf[:2], "big")
            if n > st.cfg.max_tcp_message_bytes or n == 0:
                sh.count("tcp", resolver.DROPPED)
                self.transport.abort()
                return
            if len(self.buf) < 2 + n:
                return
            msg = bytes(self.buf[2:2 + n])
            del self.buf[:2 + n]
            self._arm()
            self._query(msg, st)

    def _query(self, msg: bytes, st: DnsState) -> None:
        sh = self.shared
        d = resolver.decide(msg, st.by_source.get(self.peer, st.table) if st.by_source
                            else st.table, udp=False)
        if d.reply is not None:
            self._write(d.reply, d.result)
        elif d.query is None:
            sh.count("tcp", d.result)
        elif sh.inflight >= st.cfg.max_inflight:
            self._write(servfail(d.query), resolver.SERVFAIL)
        else:
            sh.inflight += 1
            self.pending += 1
            if self.pending >= PENDING_PER_CONNECTION and self.transport is not None:
                self.transport.pause_reading()
            sh.spawn(self._forward(msg, d, st))

    def _write(self, reply: bytes, result: str) -> None:
        if self.transport is None or self.transport.is_closing():
            self.shared.count("tcp", resolver.DROPPED)
            return
        self.transport.write(len(reply).to_bytes(2, "big") + reply)
        self.shared.count("tcp", result)

    async def _forward(self, msg: bytes, d: resolver.Decision, st: DnsState) -> None:
        try:
            reply = await forward(msg, st.upstreams, st.timeout, tcp=True)
        finally:
            self.shared.inflight -= 1
            self.pending -= 1
        assert d.query is not None
        if reply is None:
            self._write(servfail(d.query), resolver.SERVFAIL)
        else:
            self._write(reply, resolver.FORWARDED)
        if self.pending == PENDING_PER_CONNECTION - 1:
            self._resume()


Endpoints = tuple[asyncio.DatagramTransport, asyncio.Server]
"""One address's UDP transport and TCP server."""


@dataclass
class DnsPlan:
    """A prepared `dns` section: state built and, for each address whose socket is not kept
    (a new address, or a changed port), new sockets bound (TCP not yet accepting; a datagram
    endpoint has no such switch, so new UDP sockets answer from the moment they are bound,
    already with the new state)."""

    state: DnsState | None
    want_port: int = -1
    """The configured port (0: any); sockets are kept across snapshots while it is unchanged."""
    endpoints: dict[str, Endpoints] = field(default_factory=dict)
    """Per address served (the primary first; ADR 0088 for the others)."""
    fresh: list[str] = field(default_factory=list)
    """The addresses bound for this plan (the others are the current plan's, kept)."""
    shared: _Shared | None = None
    port: int = 0

    def discard(self) -> None:
        """Close what this plan bound (a failed apply)."""
        for address in self.fresh:
            _close(self.endpoints[address])


def _close(eps: Endpoints) -> None:
    eps[0].close()
    eps[1].close()


class DnsError(Exception):
    """The `dns` section could not be put in force (the port is taken)."""


class DnsService:
    """The proxy's resolver across snapshots (None of it runs without a `dns` section)."""

    def __init__(self, metrics: ProxyMetrics) -> None:
        self.counters = _Counters(metrics)
        self.current: DnsPlan = DnsPlan(None)

    @property
    def port(self) -> int:
        """The port bound (useful with port 0); 0 when no resolver runs."""
        return self.current.port

    @property
    def addresses(self) -> list[str]:
        """The addresses the resolver answers on now."""
        return list(self.current.endpoints)

    async def prepare(self, cfg: ProxyConfig) -> DnsPlan:
        d = cfg.dns
        if d is None:
            return DnsPlan(None)
        ups = (tuple(upstream_address(u) for u in d.upstreams) if d.upstreams
               else resolv_conf_upstreams(d.resolv_conf))
        state = DnsState(d, build(d, cfg.node.namespace), ups, _by_source(d))
        cur = self.current
        keep = cur.shared is not None and cur.want_port == d.port
        plan = DnsPlan(state, d.port, shared=cur.shared if keep else _Shared(state, self.counters),
                       port=cur.port if keep else d.port)
        try:
            for address in [d.address, *d.additional_addresses]:
                same = next((a for a in cur.endpoints if same_address(a, address)), None)
                if keep and same is not None:  # by value: `::1` is `0:0::1`
                    plan.endpoints[address] = cur.endpoints[same]
                elif address == d.address and not plan.port:
                    await self._bind_any(plan, d)
                else:
                    await self._bind(plan, address, plan.port, primary=address == d.address,
                                     v6only=bool(d.additional_addresses))
        except BaseException:
            plan.discard()
            raise
        own = {(a, plan.port) for a in plan.endpoints}
        if own.intersection(ups):  # forwarding to ourselves would loop until every forward timed out
            for a, p in sorted(own.intersection(ups)):
                log.warning("dns: upstream %s:%d is this resolver itself: skipped", a, p)
            state.upstreams = tuple(u for u in ups if u not in own)
        return plan

    async def _bind_any(self, plan: DnsPlan, d: DNS) -> None:
        """The primary address on port 0: a port free for both UDP and TCP."""
        for _ in range(8):  # the UDP port the kernel picks may be taken for TCP
            try:
                await self._bind(plan, d.address, 0, primary=True,
                                 v6only=bool(d.additional_addresses))
                return
            except DnsError:
                continue
        raise DnsError(f"dns {d.address}:0: no free port for both UDP and TCP")

    async def _bind(self, plan: DnsPlan, address: str, port: int, *, primary: bool,
                    v6only: bool) -> None:
        """UDP and TCP on `address`:`port` (TCP first: port 0 takes TCP's port for UDP too).
        An additional address whose family is off here is skipped with a warning
        (`listeners/sockets.py` has the rule).  `v6only`: the resolver serves more than one
        address, so an IPv6 socket takes IPv6 only, as a listener's does (alone, `::` takes
        IPv4 too)."""
        assert plan.shared is not None
        shared = plan.shared
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        tsock = socket.socket(family, socket.SOCK_STREAM)
        usock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            tsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and v6only:
                tsock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                usock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            tsock.bind((address, port))
            port = int(tsock.getsockname()[1])
            usock.bind((address, port))
        except OSError as exc:
            tsock.close()
            usock.close()
            if not primary and family_unavailable(address, exc):
                log.warning("dns: not answering on %s: %s (that address family is off in this "
                            "namespace)", hostport(address, port), exc.strerror or exc)
                return
            raise DnsError(f"dns {hostport(address, port)}: cannot bind: "
                           f"{exc.strerror or exc}") from exc
        tsock.listen(128)
        tsock.setblocking(False)
        usock.setblocking(False)
        udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(shared), sock=usock)
        tcp = await loop.create_server(lambda: _Tcp(shared), sock=tsock, start_serving=False)
        plan.endpoints[address] = (udp, tcp)
        plan.fresh.append(address)
        if primary:
            plan.port = port

    async def commit(self, plan: DnsPlan) -> None:
        """Put `plan` in force (cannot fail); the old sockets close unless kept."""
        cur = self.current
        if plan.shared is not None and plan.state is not None:
            plan.shared.state = plan.state
        kept = {id(eps) for eps in plan.endpoints.values()}
        for eps in cur.endpoints.values():
            if id(eps) not in kept:
                _close(eps)
        self.current = plan
        for address in plan.fresh:
            tcp = plan.endpoints[address][1]
            if not tcp.is_serving():
                await tcp.start_serving()
        plan.fresh = []  # in force: a later plan's discard must not close them

    def close(self) -> None:
        for eps in self.current.endpoints.values():
            _close(eps)
        if self.current.shared is not None:
            for t in list(self.current.shared.tasks):
                t.cancel()
        self.current = DnsPlan(None)
