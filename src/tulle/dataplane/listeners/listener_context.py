"""A listener's context for one snapshot: everything a request on it looks up.

A `ListenerContext` is built when a snapshot changes its listener and holds what a request
reads: the router, the clusters, the limits, the metric children, the snapshot's telemetry.
The listener's `ListenerHandle` (`context.py`) points at the current one; a swap replaces that
pointer, so a connection that started on the old context can finish on it (decision 3 of
DESIGN.md).

Why a module of its own, compiled with the request path (`tulle.native.COMPILED`): the
request stream and the drivers read the context on every request (the access log, the
tracer, the request-id switch, the path normaliser, the shared decisions, the timeouts, the
byte counters).  Interpreted, each read was a generic attribute lookup (150 to 800
instructions under callgrind, more as more code competes for CPython's type cache); compiled,
it is a field of a C struct.  `context.py` keeps what is not read per request and what the
drivers derive from (`RoutedConnection`: a compiled class may have one compiled base).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from mypy_extensions import mypyc_attr

from tulle.dataplane.listeners.chains import ChainRule, build_rules
from tulle.dataplane.listeners.dispatch import Decision, no_cluster, unresolved
from tulle.dataplane.listeners.request_stats import AddressedStats, RequestStats
from tulle.dataplane.network.chain import build_chain
from tulle.dataplane.protocols.http1 import H1Limits
from tulle.dataplane.routing.paths import normalizer_for
from tulle.dataplane.routing.router import Router
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.telemetry.tap import TapHub
from tulle.proxyconfig.address import matched_network, peer_ip
from tulle.proxyconfig.model import Destination, Listener, Settings

if TYPE_CHECKING:
    import ipaddress
    import ssl

    from tulle.dataplane.http.chain import Chain
    from tulle.dataplane.http.retry import RetryRuntime
    from tulle.dataplane.runtime.tls import TLSContexts
    from tulle.dataplane.telemetry.access_log import AccessLogger
    from tulle.dataplane.telemetry.flow_records import FlowLogger
    from tulle.dataplane.telemetry.golden import Golden
    from tulle.dataplane.telemetry.tracing.tracer import Tracer
    from tulle.dataplane.upstream.attempt import AttemptRequest
    from tulle.dataplane.upstream.cluster import ClusterRuntime

IDLE_TAP = TapHub()
"""The taps of a context built without a proxy's hub (tests, tools): never started."""

DEFAULT_OPAQUE_PORTS: Final = frozenset({25, 587, 3306, 4444, 5432, 6379, 9300, 11211})
"""Never sniffed, whatever the listener says: Linkerd's default opaque ports (since 2.11) —
SMTP (25, 587) and MySQL (3306) speak first; Galera (4444), PostgreSQL (5432), Redis (6379),
Elasticsearch transport (9300) and Memcached (11211) gain nothing from sniffing.  Part of every
`ListenerContext.opaque_ports`."""


@dataclass(slots=True)
class DestinationRule:
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    port: int
    protocol: str
    router: Router | None
    cluster: str
    refuse: bool = False
    """Connections matching it are reset (`Destination.refuse`, ADR 0114)."""

    @classmethod
    def build(cls, d: Destination, routers: dict[str, Router]) -> DestinationRule:
        # An IPv4-mapped address or range is the IPv4 one it names: original destinations
        # are compared as IPv4.
        net = matched_network(d.address) if d.address else None
        return cls(net, d.port, d.protocol, routers.get(d.route_table) if d.route_table else None,
                   d.cluster, d.refuse)

    def matches(self, ip: str, port: int) -> bool:
        if self.port and self.port != port:
            return False
        if self.network is not None:
            addr = peer_ip(ip)  # an IPv4-mapped address as IPv4, as chains compare it
            return addr is not None and addr in self.network
        return True


@mypyc_attr(allow_interpreted_subclasses=True)  # the unit tests' stand-ins derive from it
class ListenerContext:
    """Everything a connection on one listener looks up, for one snapshot."""

    def __init__(self, cfg: Listener, settings: Settings, routers: dict[str, Router],
                 clusters: dict[str, ClusterRuntime], metrics: ProxyMetrics,
                 tls: TLSContexts | None = None, golden: Golden | None = None,
                 tap: TapHub | None = None, tracing: Tracer | None = None) -> None:
        self.cfg = cfg
        self.golden = golden
        """The snapshot's golden metrics (`telemetry/golden.py`); None: off."""
        self.tap = tap if tap is not None else IDLE_TAP
        """The proxy's live taps (`telemetry/tap.py`): `record()` calls it while one runs."""
        self.name = cfg.name
        self.settings = settings
        self.router = routers.get(cfg.route_table) if cfg.route_table else None
        self.cluster = cfg.cluster
        self.clusters = clusters
        self.metrics = metrics
        self.destinations = [DestinationRule.build(d, routers) for d in cfg.destinations]
        self.opaque_ports = DEFAULT_OPAQUE_PORTS | frozenset(cfg.opaque_ports)
        """The ports an `auto` listener never sniffs: the listener's `opaque_ports` and the
        built-in defaults, joined once per snapshot."""
        self.network = build_chain(cfg.network_filters, cfg.name, metrics)
        """The network (L4) filters of this listener's relays; None when it has none."""
        self.chains: tuple[ChainRule, ...] = ()
        """The compiled `filter_chains` (`listeners.chains`); empty: the listener has none."""
        self.default_chain: ChainRule | None = None
        """With filter chains: the listener's own fields as the chain of what none matches."""
        self.chains_by_name: dict[str, ChainRule] = {}
        if cfg.filter_chains:
            self.chains, self.default_chain = build_rules(cfg, routers, tls, metrics,
                                                          self.network)
            self.chains_by_name = {c.name: c for c in self.chains}
            if self.default_chain is not None:
                self.chains_by_name[self.default_chain.name] = self.default_chain
        self.max_header_bytes = settings.max_request_header_bytes
        self.h1_limits = H1Limits(settings.max_header_count, settings.max_chunk_extension_bytes,
                                  settings.max_trailer_bytes)
        self.header_timeout = settings.header_timeout_ms / 1000
        self.idle_timeout = settings.idle_timeout_ms / 1000
        self.high_water = settings.buffer_high_water_bytes
        self.generate_request_id = settings.generate_request_id
        self.tracing = tracing
        self.tracer = (tracing.for_listener(cfg.name, cfg.direction)
                       if tracing is not None else None)
        """Trace context and spans for this listener's requests (ADR 0055); None: off."""
        self.max_connections = cfg.max_connections
        self.sources: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [
            matched_network(s) for s in cfg.sources]
        """Where connections must come from (`Listener.sources`, ADR 0098); empty: anywhere."""
        self.paths = normalizer_for(settings.path_normalization)
        """Path normalisation before routing (`resolve`); None forwards paths as received."""
        self.scheme = b"https" if cfg.tls is not None else b"http"
        self.m_protocol_errors = metrics.protocol_errors
        self.m_bytes_received = metrics.bytes_received.labels(cfg.name)
        self.m_bytes_sent = metrics.bytes_sent.labels(cfg.name)
        self._stats: dict[str, RequestStats] = {}
        self.decisions: dict[str, dict[int, Decision]] = {}
        """The shared decision of a route without filters, by cluster and timeout (`decision`
        builds them; `dispatch.resolve` reads this first, sparing every request a call)."""
        self._chain_decisions: dict[object, dict[str, Decision]] = {}
        # Route timeouts at least this long are checked by the proxy's deadline sweeper, which
        # ticks every header_timeout/4 clamped to [10 ms, 1 s] (server.py `_deadline_sweeper`):
        # they fire at most one tick (a tenth of the timeout) late.  Shorter ones get a timer.
        # ADR 0010.
        tick = max(0.01, min(1.0, settings.header_timeout_ms / 4000))
        self.sweep_timeout_min = 10 * tick
        self.access_log: AccessLogger | None = None
        """The snapshot's access log (`telemetry.access_log`), set when it is committed."""
        self.flow_log: FlowLogger | None = None
        """The snapshot's flow log (`telemetry.flow_log`), set likewise."""

    def follow(self, previous: ListenerContext) -> None:
        """This context replaces `previous` on the same listener: carry the state that must
        outlive a swap (network filters' counts)."""
        if self.network is not None:
            self.network.adopt(previous.network)
        for c in self.chains:
            if c.network is not None:
                old = previous.chains_by_name.get(c.name)
                c.network.adopt(old.network if old is not None else None)

    def ssl_contexts(self) -> list[ssl.SSLContext]:
        """The server contexts its filter chains terminate TLS with (kept in the shared
        cache while this context is in force)."""
        return [c.tls_ref.ctx for c in self.chains_by_name.values()
                if c.tls_ref is not None]

    def decision(self, cluster: str, timeout_ms: int, chain: Chain | None = None,
                 attempt: AttemptRequest | None = None,
                 retry: RetryRuntime | None = None, stream_idle: float = 0.0,
                 route: object = None, addressed: str = "") -> Decision:
        """The shared decision for requests routed to `cluster` with `timeout_ms` (and, for a
        route with filters, a per-try request, retries or a stream idle timeout, its `chain`,
        `attempt`, `retry` and `stream_idle`: one decision per route and cluster, keyed by
        the chain or attempt the route has, else by the `route` itself; `addressed`: the
        Service the route's requests were addressed to, for their stats)."""
        key = chain if chain is not None else attempt if attempt is not None else route
        if key is not None:
            by_cluster = self._chain_decisions.get(key)
            if by_cluster is not None:
                d = by_cluster.get(cluster)
                if d is not None:
                    return d
            return self._chained(cluster, timeout_ms, chain, attempt, key, retry, stream_idle,
                                 addressed)
        by_timeout = self.decisions.get(cluster)
        if by_timeout is not None:
            d = by_timeout.get(timeout_ms)
            if d is not None:
                return d
        rt = self.clusters.get(cluster)
        if rt is None:
            return no_cluster(cluster)
        if rt.cfg.unresolved:
            return unresolved(cluster)
        d = Decision(rt, cluster, timeout_ms, stats=self.stats(cluster))
        self.decisions.setdefault(cluster, {})[timeout_ms] = d
        return d

    def _chained(self, cluster: str, timeout_ms: int, chain: Chain | None,
                 attempt: AttemptRequest | None, key: object,
                 retry: RetryRuntime | None = None, stream_idle: float = 0.0,
                 addressed: str = "") -> Decision:
        """The first request to `cluster` through `chain` (a route with filters).  A cluster
        that is missing or unresolved keeps the chain: its filters run first (a redirect
        answers before the backend would matter), then the request is answered 503/500."""
        rt = self.clusters.get(cluster)
        if rt is None or rt.cfg.unresolved:
            d = no_cluster(cluster) if rt is None else unresolved(cluster)
            d.chain = chain
        else:
            d = Decision(rt, cluster, timeout_ms, stats=self.stats(cluster, addressed), chain=chain,
                         attempt=attempt, retry=retry, stream_idle=stream_idle)
        self._chain_decisions.setdefault(key, {})[cluster] = d
        return d

    def filter_error(self, name: str) -> None:
        """A filter raised on a request of this listener (`http/chain.py`)."""
        self.metrics.filter_errors.labels(self.name, name).value += 1

    def authz_decision(self, policy: str, action: str, result: str) -> None:
        """An authorization decision on a request of this listener (`filters/authz.py`)."""
        self.metrics.authz_decisions.labels(self.name, policy, action, result).value += 1

    def fault_injected(self, policy: str, fault: str) -> None:
        self.metrics.faults_injected.labels(self.name, policy, fault).value += 1

    def rate_limited(self, policy: str, scope: str) -> None:
        self.metrics.rate_limited.labels(self.name, policy, scope).value += 1

    def rate_limit_backend_failure(self, policy: str) -> None:
        self.metrics.rate_limit_backend_failures.labels(self.name, policy).value += 1

    def stats(self, cluster: str, addressed: str = "") -> RequestStats:
        """The request stats of `cluster`; for requests addressed to another Service than the
        cluster's (a route splitting Service `addressed` to other Services' backends), stats
        that also count them for `addressed` (`telemetry/summary.py`)."""
        if addressed and addressed != self._service_of(cluster):
            key = f"{cluster}\x00{addressed}"
            st = self._stats.get(key)
            if st is None:
                base = self.stats(cluster)
                st = self._stats[key] = AddressedStats(
                    base, self.metrics.addressed.series(self.name, cluster, addressed))
            return st
        st = self._stats.get(cluster)
        if st is None:
            g = self.golden
            rt = self.clusters.get(cluster)
            st = self._stats[cluster] = RequestStats(
                self.metrics, self.name, cluster,
                g.http(self.cfg, rt.cfg if rt is not None else None) if g is not None else None)
        return st

    def _service_of(self, cluster: str) -> str:
        rt = self.clusters.get(cluster)
        md = rt.cfg.metadata if rt is not None else None
        if md is None or not md.service:
            return ""
        return f"{md.namespace}/{md.service}" if md.namespace else md.service

    def protocol_error(self, kind: str) -> None:
        self.m_protocol_errors.labels(self.name, kind).value += 1

    def source_allowed(self, peer: object) -> bool:
        """Whether a connection from `peer` (the transport's `peername`) may be served here:
        always without `sources`; else its address in one of them (ADR 0098)."""
        sources = self.sources
        if not sources:
            return True
        if not isinstance(peer, tuple) or not peer:
            return False
        addr = peer_ip(str(peer[0]))
        return addr is not None and any(addr in n for n in sources)

    def destination_for(self, ip: str, port: int) -> DestinationRule | None:
        for d in self.destinations:
            if d.matches(ip, port):
                return d
        return None
