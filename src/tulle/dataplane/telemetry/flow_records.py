"""Flow logs: one record per relayed TCP connection when it ends, and periodically while it
lasts — what a network team expects from VPC flow logs.

Why here: every opaque relay (a `tcp` cluster, a passthrough to an original destination, an
SNI-passthrough TLS connection) goes through `network/relay.py` and `TcpProxy`, so that is
where a flow starts and ends whether or not its listener has network filters.  The
listener's snapshot carries the `FlowLogger` (`telemetry.flow_log`); without it nothing is
tracked.  The per-listener `flow_log` network filter (`network/flow_log.py`) is the older,
narrower observer (Python logging only); both read the same `ConnectionRecord`.

Packets: counted by the kernel, not by us — `TCP_INFO`'s `tcpi_segs_in` / `tcpi_segs_out`
of the client's and the upstream's socket (every segment, pure ACKs included, as a VPC flow
log counts packets), read when the connection ends (before its sockets close) and at each
interim report.  Where a socket is not ours to read (already closed by the peer's side on
the copy engine) the count is null, never a guess.

Interim records (`event: interim`): every `interval_ms`, each connection open at least that
long gets a record with its counts so far and no close reason; the end record has the
totals (`event: end`).  The report task runs on the loop and costs nothing per byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tulle.dataplane.http.facts import ConnectionFacts as HttpFacts
from tulle.dataplane.telemetry.logformat import TextFormat, render_json
from tulle.dataplane.telemetry.sinks import LineSink, OtlpLogSink, build_sink
from tulle.dataplane.telemetry.starttime import start_time
from tulle.proxyconfig.logs import FlowLogTelemetry

if TYPE_CHECKING:
    from tulle.dataplane.network.filter import ConnectionFacts, ConnectionRecord
    from tulle.dataplane.network.tcp_proxy import TcpProxy
    from tulle.dataplane.telemetry.otlp.common import Value
    from tulle.proxyconfig.model import Node

_TCP_INFO_SEGS = struct.Struct("=II")
_SEGS_OFFSET = 136
"""`tcpi_segs_out`, `tcpi_segs_in` (u32 each) in Linux's `struct tcp_info` (since 4.2)."""
_TCP_INFO_LEN = 144
_TCP_INFO_BYTES = struct.Struct("=QQ")
_BYTES_OFFSET = 120
"""`tcpi_bytes_acked`, `tcpi_bytes_received` (u64 each, since 4.1)."""


def wire_counts(sock: socket.socket | None) -> tuple[int, int, int, int] | None:
    """(bytes received, bytes sent and acknowledged, segments in, segments out) of a TCP
    socket, as the kernel counts them (TLS records and all); None when unreadable."""
    if sock is None:
        return None
    try:
        raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN)
    except (OSError, ValueError):
        return None
    if len(raw) < _TCP_INFO_LEN:
        return None
    acked, received = _TCP_INFO_BYTES.unpack_from(raw, _BYTES_OFFSET)
    segs_out, segs_in = _TCP_INFO_SEGS.unpack_from(raw, _SEGS_OFFSET)
    return received, acked, segs_in, segs_out


class HttpFlow:
    """An HTTP connection the flow log follows: its facts, socket and start."""

    __slots__ = ("facts", "local", "protocol", "sock", "started", "wall_ns")

    def __init__(self, facts: HttpFacts, sock: socket.socket, local: tuple[str, int] | None,
                 protocol: str, started: float) -> None:
        self.facts = facts
        self.sock = sock
        self.local = local
        self.protocol = protocol
        self.started = started
        self.wall_ns = time.time_ns()


def segments(sock: socket.socket | None) -> tuple[int, int] | None:
    """(segments in, segments out) of a TCP socket, from the kernel; None when unreadable."""
    counts = wire_counts(sock)
    return None if counts is None else (counts[2], counts[3])


def _address(a: tuple[str, int] | None) -> str | None:
    if a is None:
        return None
    return f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"


class FlowLogger:
    """One snapshot's flow log: the live relays, their records, the sink."""

    def __init__(self, cfg: FlowLogTelemetry, resource: Mapping[str, Value], node: Node,
                 principal: str = "") -> None:
        self.cfg = cfg
        self.principal = principal or None
        """The proxy's own SPIFFE ID (`telemetry.principal`); None: unnamed."""
        self.interval = cfg.interval_ms / 1000
        self.local_workload = f"{node.namespace}/{node.name}"
        self.text = TextFormat(cfg.text_format) if cfg.format == "text" else None
        render = self.text.render if self.text is not None else render_json
        self.sink: LineSink | OtlpLogSink = build_sink("flow_log", cfg.sink, render,
                                                       self.text is not None, resource)
        self.live: dict[TcpProxy, tuple[ConnectionFacts, int]] = {}
        """Open relays: their facts and wall-clock start (Unix ns), one per flow."""
        self.tls: set[TcpProxy] = set()
        """Open relays that carry TLS (terminated here, or a ClientHello relayed as is)."""
        self.http: dict[object, HttpFlow] = {}
        """Open HTTP connections (the drivers, keyed by identity)."""
        self._task: asyncio.Task[None] | None = None

    # -- the relay's side --------------------------------------------------------------------

    def opened(self, conn: TcpProxy, facts: ConnectionFacts, tls: bool = False) -> None:
        self.live[conn] = (facts, time.time_ns())
        if tls:
            self.tls.add(conn)
        conn.flow_log = self

    def facts(self, conn: TcpProxy) -> ConnectionFacts | None:
        entry = self.live.get(conn)
        return entry[0] if entry is not None else None

    def closed(self, conn: TcpProxy, record: ConnectionRecord) -> None:
        entry = self.live.pop(conn, None)
        tls = conn in self.tls
        self.tls.discard(conn)
        ns = time.time_ns()
        wall = entry[1] if entry is not None else ns - int(record.duration * 1e9)
        self.sink.offer(self.entry(conn, record.facts, "end", wall, record.duration,
                                   record.bytes_received, record.bytes_sent, conn.packets,
                                   record, tls), ns)

    # -- HTTP connections (the listener handle's side) -----------------------------------------

    def connection_opened(self, conn: object) -> bool:
        """A driver took a client connection (`ListenerHandle.connection_opened`): follow it
        when it is an HTTP connection (relays register through `opened`); True if so."""
        facts = getattr(conn, "facts", None)
        transport = getattr(conn, "transport", None)
        if not isinstance(facts, HttpFacts) or transport is None:
            return False
        sock = transport.get_extra_info("socket")
        if sock is None:
            return False
        local = transport.get_extra_info("sockname")
        local = (str(local[0]), int(local[1])) if isinstance(local, tuple) else None
        # The drivers are H1Downstream / H2Downstream (`listeners/http1.py`, `http2.py`); named,
        # not imported: the listeners import this module's users.
        protocol = "http2" if type(conn).__name__.startswith("H2") else "http1"
        self.http[conn] = HttpFlow(facts, sock, local, protocol, time.monotonic())
        return True

    def forget(self, conn: object) -> None:
        """`conn` turned out not to be an HTTP connection's driver: no record of it."""
        self.http.pop(conn, None)

    def connection_closed(self, conn: object) -> None:
        """The driver's connection is lost (its socket still open: read the counts now)."""
        flow = self.http.pop(conn, None)
        if flow is None:
            return
        duration = time.monotonic() - flow.started
        self.sink.offer(self.http_entry(flow, "end", duration, wire_counts(flow.sock)),
                        time.time_ns())

    def http_entry(self, flow: HttpFlow, event: str, duration: float,
                   counts: tuple[int, int, int, int] | None) -> dict[str, Any]:
        f = flow.facts
        inbound = f.direction == "inbound"
        dst = f.original_dst or flow.local
        peer = f.peer or ("", 0)
        return {
            "start_time": start_time(flow.wall_ns),
            "event": event,
            "direction": f.direction,
            "listener": f.listener,
            "transport": "tcp",
            "protocol": f"{flow.protocol}+tls" if f.tls else flow.protocol,
            "source_address": peer[0] or None,
            "source_port": peer[1] or None,
            "destination_address": dst[0] if dst else None,
            "destination_port": dst[1] if dst else None,
            "original_destination": _address(f.original_dst),
            "upstream_host": None,  # each request chooses its own (see the access log)
            "upstream_cluster": None,
            "source_workload": None if inbound else self.local_workload,
            "source_principal": (f.peer_identity or None) if inbound else self.principal,
            "destination_workload": self.local_workload if inbound else None,
            "destination_principal": self.principal if inbound else None,
            "bytes_received": counts[0] if counts else None,
            "bytes_sent": counts[1] if counts else None,
            "packets_received": counts[2] if counts else None,
            "packets_sent": counts[3] if counts else None,
            "upstream_packets_sent": None,
            "upstream_packets_received": None,
            "duration": round(duration * 1000, 3),
            "close_reason": "closed" if event == "end" else None,
            "verdict": "allow",
        }

    # -- life ----------------------------------------------------------------------------------

    def start(self) -> None:
        self.sink.start()
        if self.interval and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._report())

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.sink.close()

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            now = time.monotonic()  # the clock of the connections' `started`
            ns = time.time_ns()
            for conn, (facts, wall) in list(self.live.items()):
                age = now - conn.started
                if age < self.interval or conn.ended:
                    continue
                received, sent = conn.bytes_moved()
                self.sink.offer(self.entry(conn, facts, "interim", wall, age,
                                           received, sent, conn.read_packets(), None,
                                           conn in self.tls), ns)
            for flow in list(self.http.values()):
                age = now - flow.started
                if age >= self.interval:
                    self.sink.offer(self.http_entry(flow, "interim", age,
                                                    wire_counts(flow.sock)), ns)

    # -- the record ---------------------------------------------------------------------------

    def entry(self, conn: TcpProxy, facts: ConnectionFacts, event: str, wall_ns: int,
              duration: float, received: int, sent: int,
              packets: tuple[tuple[int, int] | None, tuple[int, int] | None],
              record: ConnectionRecord | None, tls_seen: bool = False) -> dict[str, Any]:
        inbound = facts.direction == "inbound"
        target = conn.target
        cluster = target.cluster
        dest_workload = None
        dest_principal = None
        if cluster is not None:
            meta = cluster.cfg.metadata
            if meta is not None and meta.workload:
                dest_workload = f"{meta.namespace}/{meta.workload}" if meta.namespace \
                    else meta.workload
            tls = cluster.cfg.tls
            if tls is not None and len(tls.expected_spiffe_ids) == 1:
                dest_principal = tls.expected_spiffe_ids[0]
        if inbound:
            dest_workload = self.local_workload
        dst = facts.original_destination or facts.local
        client, upstream = packets
        verdict = "allow"
        reason = None
        if record is not None:
            reason = record.close_reason
            if record.rejected_by:
                verdict = f"deny:{record.rejected_by}:{record.reject_reason or 'rejected'}"
        elif conn.close_reason in ("rejected", "filter_error"):
            verdict = "deny"
        out: dict[str, Any] = {
            "start_time": start_time(wall_ns),
            "event": event,
            "direction": facts.direction,
            "listener": facts.listener,
            "transport": "tcp",
            "protocol": "tls" if tls_seen or facts.tls else "tcp",
            "source_address": facts.peer[0] or None,
            "source_port": facts.peer[1] or None,
            "destination_address": dst[0] if dst else None,
            "destination_port": dst[1] if dst else None,
            "original_destination": _address(facts.original_destination),
            "upstream_host": _address(conn.upstream_address),
            "upstream_cluster": target.name,
            "source_workload": None if inbound else self.local_workload,
            "source_principal": (facts.peer_identity or None) if inbound else self.principal,
            "destination_workload": dest_workload,
            "destination_principal": self.principal if inbound else dest_principal,
            "bytes_received": received,
            "bytes_sent": sent,
            "packets_received": client[0] if client else None,
            "packets_sent": client[1] if client else None,
            "upstream_packets_sent": upstream[1] if upstream else None,
            "upstream_packets_received": upstream[0] if upstream else None,
            "duration": round(duration * 1000, 3),
            "close_reason": reason,
            "verdict": verdict,
        }
        return out
