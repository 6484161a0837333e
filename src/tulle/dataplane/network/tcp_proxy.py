"""The TCP proxy: the terminal of the network filter chain, relaying bytes unparsed.

A relay starts from a live downstream transport (handed over by the detection driver, with any
bytes it already read) and a target: a `tcp` cluster (round robin over its endpoints; a TCP
cluster has no pool, every client connection dials its own upstream connection) or a fixed
address (passthrough to a transparent connection's original destination).  Upstream
connections are opened by the one dialler, `tulle.dataplane.upstream.connect`.

Two engines, one behaviour (`relay.py` picks one per connection):

* `splice.SpliceRelay` (plaintext on both sides, the normal case): bytes move socket -> pipe ->
  socket with `os.splice`, never entering Python.
* `copy.CopyRelay` (TLS on either side, or no `os.splice`): two asyncio Protocols that write
  what one reads into the other, with pause/resume reading driven by the other side's buffer.

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

With network filters on the listener (`chain.py`), the relay first awaits the chain's verdict,
before anything is dialled: a rejected client is reset and the origin never sees it.  At the
end it hands the filters a `ConnectionRecord` (bytes each way, duration, close reason,
endpoint).  Without filters none of this is built.

A config swap may end a relay (`listeners/orphans.py`, ADRs 0108 and 0117): `revoke` when the
new authorization denies it (reset, close reason `revoked`), `not_admitted` when the listener's
own admission refuses it now (reset, `source_refused` / `destination_refused`,
`listeners/admission.py`, ADR 0127), `way_in_gone` when the new config has no way in for it,
`listener_gone` when its listener left the config (both FIN).  Each is counted in
`tulle_proxy_tcp_config_closes_total{listener,reason}`.  What such a recheck needs
is read then, not kept per relay: its facts (`live_facts`, from the live sockets when no
filter or flow log kept them) and the chain it was last admitted by (`decided_by`).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import TYPE_CHECKING, Final

from tulle.dataplane.listeners.context import Connection
from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.network.filter import ConnectionFacts, ConnectionRecord
from tulle.dataplane.security.spiffe import spiffe_id
from tulle.dataplane.telemetry.flow_records import segments
from tulle.proxyconfig.address import peer_host

if TYPE_CHECKING:
    from tulle.dataplane.network.chain import ConnectionChain, NetworkChain
    from tulle.dataplane.telemetry.flow_records import FlowLogger
    from tulle.dataplane.telemetry.golden import TcpGolden
    from tulle.dataplane.telemetry.metrics import CounterChild, GaugeChild
    from tulle.dataplane.upstream.cluster import ClusterRuntime
    from tulle.dataplane.upstream.lb import EndpointState
    from tulle.proxyconfig.model import Listener

PASSTHROUGH: Final = "PassthroughCluster"
"""Metric label of relays to an original destination (Istio's name for the same thing)."""
PASSTHROUGH_CONNECT_TIMEOUT: Final = 5.0

LINGER_RESET: Final = struct.pack("ii", 1, 0)
"""SO_LINGER on, 0 s: close() sends RST instead of FIN."""


def address_of(value: object) -> tuple[str, int] | None:
    """A socket address as the filters see it (an IPv4-mapped IPv6 address as IPv4)."""
    if isinstance(value, tuple) and len(value) >= 2:
        return peer_host(str(value[0])), int(value[1])
    return None


def transport_facts(cfg: Listener, transport: asyncio.BaseTransport,
                    original_destination: tuple[str, int] | None) -> ConnectionFacts:
    """What the network filters get to see about the connection on `transport`."""
    ssl_object = transport.get_extra_info("ssl_object")
    return ConnectionFacts(
        listener=cfg.name,
        direction=cfg.direction,
        peer=address_of(transport.get_extra_info("peername")) or ("", 0),
        local=address_of(transport.get_extra_info("sockname")),
        original_destination=original_destination,
        tls=ssl_object is not None,
        sni=getattr(ssl_object, "server_hostname", None) if ssl_object is not None else None,
        alpn=ssl_object.selected_alpn_protocol() if ssl_object is not None else None,
        peer_identity=spiffe_id(ssl_object) or None,
    )


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


class TcpProxy(Connection):
    """What both engines share: the filter verdict, the destination, metrics, the record,
    registration with the listener."""

    golden: TcpGolden | None = None
    """The golden metrics' series of this connection (`telemetry/golden.py`), set by `relay`
    when the snapshot has them: opened when connected, closed with its bytes at the end."""
    _up_counted = False
    # What a swap's recheck reads (ADR 0117); class defaults, so a relay pays nothing for them
    # until it has one.
    original_destination: tuple[str, int] | None = None
    """Where a transparent connection was going (`relay`): a fact of its filters."""
    decided_by: NetworkChain | None = None
    """The network filters whose policies last admitted this relay (at open, or at the
    recheck of a swap): a swap that keeps their configs rechecks nothing."""
    revoked_by = ""
    """The filter that revoked this relay at a swap (the close record's `rejected_by`)..."""
    revoke_reason = ""
    """... and its reason (`reject_reason`)."""

    def __init__(self, handle: ListenerHandle, target: Target,
                 chain: ConnectionChain | None = None) -> None:
        self.handle = handle
        self.ctx = ctx = handle.ctx
        self.loop = asyncio.get_running_loop()
        self.target = target
        self.chain = chain
        self.client_tls = False
        """This proxy terminated the client's TLS (`relay`): a verified mTLS stream."""
        self.route_key: str | None = None
        """The name of the filter chain this connection came in by (`relay`), None without
        one: at a swap that removes that chain, the relay is closed (`listeners/orphans.py`)."""
        if chain is not None:
            self.decided_by = chain.chain
        self.ended = False
        self.close_reason = ""
        self.idle_timeout = ctx.settings.tcp_idle_timeout_ms / 1000
        self.last_active = now = self.loop.time()
        """Loop time of the last bytes moved (or of the start)."""
        self.started = time.monotonic()
        """When the connection was accepted, on the monotonic clock: the flow record's
        duration (the loop's clock has millisecond steps)."""
        self.deadline = now + self.idle_timeout if self.idle_timeout else 0.0
        self.upstream_address: tuple[str, int] | None = None
        self.flow_log: FlowLogger | None = None
        """The snapshot's flow log when it has one (`telemetry/flow_records.py`)."""
        self.packets: tuple[tuple[int, int] | None, tuple[int, int] | None] = (None, None)
        """(segments in, out) of the client's and the upstream's socket, read from TCP_INFO
        just before they close (flow log only)."""
        self._task: asyncio.Task[None] | None = None
        self._endpoint: EndpointState | None = None
        self._up_active: GaugeChild | None = None
        m = ctx.metrics
        self.m_sent: CounterChild = m.tcp_bytes.labels(ctx.name, target.name, "sent")
        self.m_received: CounterChild = m.tcp_bytes.labels(ctx.name, target.name, "received")
        handle.connection_opened(self)

    def start(self, transport: asyncio.Transport, initial: bytes) -> None:
        raise NotImplementedError

    def bytes_moved(self) -> tuple[int, int]:
        """(client -> upstream, upstream -> client) bytes of this connection so far."""
        raise NotImplementedError

    def sockets(self) -> tuple[socket.socket | None, socket.socket | None]:
        """The client's and the upstream's socket while they are open (for TCP_INFO)."""
        return None, None

    def live_facts(self) -> ConnectionFacts | None:
        """The connection's facts for a recheck: those its filters or flow log kept, else read
        from the client's side now (nothing is kept per relay for a recheck that may never
        come); None once the client's side is gone."""
        chain = self.chain
        if chain is not None:
            return chain.facts
        flow = self.flow_log
        facts = flow.facts(self) if flow is not None else None
        return facts if facts is not None else self.read_facts()

    def read_facts(self) -> ConnectionFacts | None:
        """The facts, read from the client's side (socket or transport) while it is open."""
        raise NotImplementedError

    def read_packets(self) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
        client, upstream = self.sockets()
        return segments(client), segments(upstream)

    def closing(self) -> None:
        """The engine is about to close the sockets: keep their packet counts (flow log)."""
        if self.flow_log is not None and self.packets == (None, None):
            self.packets = self.read_packets()

    def set_reason(self, reason: str) -> None:
        """Why the relay ends; the first reason given wins."""
        if not self.close_reason:
            self.close_reason = reason

    async def admitted(self) -> bool:
        """Run the network filters (if any); False when they refused the connection (the
        engine then resets the client)."""
        chain = self.chain
        if chain is None:
            return True
        verdict = await chain.admit()
        if verdict is None:
            return True
        self.set_reason("filter_error" if verdict.reason == "filter_error" else "rejected")
        return False

    def destination(self) -> tuple[str, int, float] | None:
        t = self.target
        if t.cluster is None:
            assert t.address is not None
            self.upstream_address = t.address
            return t.address[0], t.address[1], PASSTHROUGH_CONNECT_TIMEOUT
        ep = t.cluster.pick()
        if ep is None:
            self.set_reason("no_endpoint")
            return None
        self._endpoint = ep
        self.upstream_address = (ep.address, ep.port)
        return ep.address, ep.port, t.cluster.connect_timeout

    def connected(self) -> None:
        golden = self.golden
        if golden is not None:
            golden.opened()
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

    def flush_golden(self) -> None:
        """Add the bytes moved so far to the golden TCP counters (before /metrics renders)."""
        golden = self.golden
        if golden is not None and self._up_active is not None and not self.ended:
            golden.flush(*self.bytes_moved())

    def connect_failed(self) -> None:
        self.set_reason("connect_failed")
        cluster = self.target.cluster
        if cluster is not None:
            cluster.m_connect_failures.value += 1
        else:
            self.ctx.metrics.upstream_connect_failures.labels(PASSTHROUGH).value += 1

    def finished(self) -> None:
        """Bookkeeping once, when the relay is over (both sockets closed or closing)."""
        if self.ended:
            return
        self.ended = True
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        self._up_counted = self._up_active is not None
        if self._up_active is not None:
            self._up_active.value -= 1
            self._up_active = None
        if self._endpoint is not None and self._endpoint.active > 0:
            self._endpoint.active -= 1
        self._endpoint = None
        self.handle.connection_closed(self)
        golden = self.golden
        if golden is not None and self._up_counted:
            golden.closed(*self.bytes_moved())
        chain = self.chain
        flow = self.flow_log
        if chain is not None or flow is not None:
            facts = chain.facts if chain is not None else flow.facts(self) if flow else None
            if facts is None:
                return
            record = ConnectionRecord(facts, self.target.name)
            record.upstream = self.upstream_address if self.close_reason not in (
                "rejected", "filter_error") else None
            record.bytes_received, record.bytes_sent = self.bytes_moved()
            record.duration = time.monotonic() - self.started
            record.close_reason = self.close_reason or "aborted"
            if self.revoked_by:
                record.rejected_by = self.revoked_by
                record.reject_reason = self.revoke_reason
            if chain is not None:
                chain.closed(record)
            if flow is not None:
                flow.closed(self, record)

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
        self.set_reason("idle_timeout")
        self.idle_close()

    def idle_close(self) -> None:
        """Close both sides (FIN, not RST: nothing was cut short, it was abandoned)."""
        raise NotImplementedError

    def way_in_gone(self, reason: str = "no_filter_chain") -> None:
        """The config in force has no way in for this stream (PERMISSIVE -> STRICT took the
        `plaintext` chain it came in by; REGISTRY_ONLY took a passthrough's, `no_destination`):
        closed on both sides, as a new connection the config no longer takes is closed; close
        reason `no_filter_chain` (or `reason`)."""
        self._config_close(reason)

    def listener_gone(self) -> None:
        """Its listener left the config (a workload port removed): closed on both sides (FIN),
        after the grace a removed listener's HTTP connections get; `listener_removed`."""
        self._config_close("listener_removed")

    def revoke(self, by: str, reason: str, close_reason: str = "revoked") -> None:
        """The config in force refuses this stream (filter `by`, `reason`): reset on both
        sides, as a connection refused at open is, and nothing more relayed; `revoked` (or
        `close_reason`)."""
        if self.ended:
            return
        self.revoked_by, self.revoke_reason = by, reason
        self._count_config_close(close_reason)
        self.set_reason(close_reason)
        self.abort()

    def admission_facts(self) -> tuple[str, tuple[str, int] | None] | None:
        if self.ended:
            return None
        facts = self.live_facts()
        if facts is None:  # the client's side is gone: the relay is ending anyway
            return None
        return facts.peer[0], self.original_destination

    def not_admitted(self, reason: str) -> None:
        """The listener's own admission refuses this stream now (its `sources`, a refusing
        destination: `listeners/admission.py`, ADR 0127): reset on both sides at once, as
        `revoke`; close reason `reason`, flow log verdict `deny:listener:<reason>`."""
        self.revoke("listener", reason, reason)

    def _config_close(self, reason: str) -> None:
        if self.ended:
            return
        self._count_config_close(reason)
        self.set_reason(reason)
        self.idle_close()

    def _count_config_close(self, reason: str) -> None:
        self.ctx.metrics.tcp_config_closes.labels(self.handle.name, reason).value += 1

    def start_drain(self) -> None:
        """An opaque stream has no request boundary to stop at: it runs until it ends, or until
        the drain deadline aborts it."""
