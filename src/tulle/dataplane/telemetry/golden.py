"""The golden metrics: Istio's standard families and labels, so existing dashboards read Tulle.

Why Istio's names one to one (DESIGN.md 3.9): Kiali and the Istio Grafana dashboards query
`istio_requests_total{reporter, source_workload, destination_service, response_code, ...}`;
a mesh that exposes exactly those names is read by them unchanged.  Two proxies see each
request: the caller's reports it with `reporter="source"`, the server's with
`reporter="destination"`, as Istio's sidecars do.

Where each label comes from (ADR 0053):

* the local workload: the contract's `telemetry.metrics` (name, app, version, canonical
  service/revision, cluster) and `node` (name, namespace, service);
* the destination of an outbound request: the cluster's `metadata` (service, namespace,
  workload, labels `app` / `version`) and the identity the cluster expects of its servers;
* the source of an inbound request: the verified SPIFFE ID of the caller's certificate (the
  connection's facts), looked up in `telemetry.metrics.peers`; an identity not listed gives its
  SPIFFE namespace and workload `unknown`; plaintext gives `unknown` throughout;
* per request: `request_protocol` (`http`, `grpc`), `response_code`, `grpc_response_status`
  (the status the caller got, `grpc_status.py`),
  `response_flags` (Envoy's codes from the stream's raw flags, by `telemetry/flags.py`, the
  module the access log shares; mapped once per distinct series) and `connection_security_policy`
  (`mutual_tls` when the caller was verified, else `none`; `unknown` on the source side).

Cost: the labels that do not change per request are one tuple per (listener, cluster), built
on first use; each request costs one tuple key, one dict lookup and four updates
(`HttpGolden.count`).  Cardinality is bounded per family (`max_series_per_family`): a label set
beyond the bound goes to one overflow series and is counted, never grown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from tulle.dataplane.telemetry.flags import response_flags as envoy_flags
from tulle.dataplane.telemetry.grpc_status import call_status, is_grpc
from tulle.dataplane.telemetry.metrics import (
    Counter,
    CounterChild,
    Histogram,
    HistogramChild,
    ProxyMetrics,
)
from tulle.dataplane.telemetry.series import bucket
from tulle.proxyconfig.stats import DURATION_BUCKETS_MS

if TYPE_CHECKING:
    from tulle.dataplane.http.stream import RequestStream
    from tulle.proxyconfig.model import Cluster, Listener, ProxyConfig
    from tulle.proxyconfig.telemetry import MetricsTelemetry, PeerWorkload

SOURCE_LABELS = ("source_workload", "source_canonical_service", "source_canonical_revision",
                 "source_workload_namespace", "source_principal", "source_app",
                 "source_version", "source_cluster")
DESTINATION_LABELS = ("destination_workload", "destination_workload_namespace",
                      "destination_principal", "destination_app", "destination_version",
                      "destination_service", "destination_canonical_service",
                      "destination_canonical_revision", "destination_service_name",
                      "destination_service_namespace", "destination_cluster")
HTTP_LABELS: Final = ("reporter", *SOURCE_LABELS, *DESTINATION_LABELS, "request_protocol",
               "response_code", "grpc_response_status", "response_flags",
               "connection_security_policy")
"""Istio's standard labels of the request families, in Istio's order."""
TCP_LABELS: Final = ("reporter", *SOURCE_LABELS, *DESTINATION_LABELS, "request_protocol",
              "response_flags", "connection_security_policy")
"""The TCP families have no response code or gRPC status."""

BYTES_BUCKETS: Final = (1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0, 10000000.0)
"""Body size buckets (bytes), decimal exponential from 1 to 10^7 as Istio's stats plugin."""

UNKNOWN: Final = "unknown"
OVERFLOW: Final = "overflow"
Side = tuple[str, ...]
"""The values of `SOURCE_LABELS` or of `DESTINATION_LABELS`."""


def _spiffe_namespace(principal: str) -> str:
    """`ns` of `spiffe://<td>/ns/<ns>/sa/<sa>`; empty when the ID has another shape."""
    parts = principal.split("/")
    try:
        return parts[parts.index("ns") + 1]
    except (ValueError, IndexError):
        return ""


class GoldenFamilies:
    """The golden families, registered in the proxy's registry (once per process) when the
    first snapshot with `telemetry.metrics` arrives."""

    def __init__(self, metrics: ProxyMetrics) -> None:
        r = metrics.registry
        self.requests = r.counter("istio_requests_total",
                                  "Requests handled (Istio standard metric).", HTTP_LABELS)
        self.duration = r.histogram("istio_request_duration_milliseconds",
                                    "Request duration, milliseconds (Istio standard metric).",
                                    HTTP_LABELS, DURATION_BUCKETS_MS)
        self.request_bytes = r.histogram("istio_request_bytes",
                                         "Request body size, bytes (Istio standard metric).",
                                         HTTP_LABELS, BYTES_BUCKETS)
        self.response_bytes = r.histogram("istio_response_bytes",
                                          "Response body size, bytes (Istio standard metric).",
                                          HTTP_LABELS, BYTES_BUCKETS)
        self.tcp_sent = r.counter("istio_tcp_sent_bytes_total",
                                  "Bytes sent to the client of a TCP connection.", TCP_LABELS)
        self.tcp_received = r.counter("istio_tcp_received_bytes_total",
                                      "Bytes received from the client of a TCP connection.",
                                      TCP_LABELS)
        self.tcp_opened = r.counter("istio_tcp_connections_opened_total",
                                    "TCP connections opened.", TCP_LABELS)
        self.tcp_closed = r.counter("istio_tcp_connections_closed_total",
                                    "TCP connections closed.", TCP_LABELS)
        self.overflow = r.counter(
            "tulle_proxy_metric_overflow_total",
            "Observations recorded in a golden family's overflow series because the family "
            "held telemetry.metrics.max_series_per_family label sets already.", ("family",))
        self.limit = 2000


def bounded(family: Counter | Histogram, values: tuple[str, ...], limit: int,
            overflow: Counter) -> CounterChild | HistogramChild:
    """`family`'s child for `values`, or its overflow series when the family is full (a new
    label set beyond `limit`); the overflow is counted per observation routed to it."""
    child = family.children.get(values)
    if child is not None:
        return child  # type: ignore[return-value]
    if len(family.children) >= limit:
        overflow.labels(family.name).value += 1
        values = (values[0],) + (OVERFLOW,) * (len(values) - 1)
    return family.labels(*values)


class _Series:
    __slots__ = ("duration", "request_bytes", "requests", "response_bytes")

    def __init__(self, requests: CounterChild, duration: HistogramChild,
                 request_bytes: HistogramChild, response_bytes: HistogramChild) -> None:
        self.requests = requests
        self.duration = duration
        self.request_bytes = request_bytes
        self.response_bytes = response_bytes


class HttpGolden:
    """The golden children of one (listener, cluster): `count` runs once per request."""

    __slots__ = ("_cache", "_fam", "_golden", "_inbound", "_local", "_plain")

    def __init__(self, golden: Golden, inbound: bool, local: Side, destination: Side) -> None:
        self._golden = golden
        self._fam = golden.families
        self._inbound = inbound
        self._local = (local, destination)
        """Inbound: (destination side = the local workload, unused); outbound: (source side =
        the local workload, destination side = the cluster's)."""
        self._cache: dict[tuple[str, int, str, str, bool], _Series] = {}
        self._plain: dict[int, _Series] = {}
        """The series of `_cache` whose key is only a status (no peer identity, no flags,
        not gRPC: most requests), by status: an int lookup, no key tuple (ADR 0066)."""

    def count(self, stream: RequestStream, duration_ms: float) -> None:
        identity = stream.conn.facts.peer_identity if self._inbound else ""
        status = stream.status
        head = stream.head
        flags = stream.flags
        s: _Series | None
        if not identity and not flags and head.version != b"2":  # the common key: by status
            s = self._plain.get(status)
            if s is None:
                key = ("", status, "", "", False)
                s = self._cache.get(key)
                if s is None:
                    s = self._series(key)
                if key in self._cache:  # (an overflowed key is not: see _series)
                    self._plain[status] = s
        else:
            grpc = head.version == b"2" and is_grpc(head.headers)
            grpc_status = ""
            if grpc:
                grpc_status = call_status(stream.grpc_status, status, flags)
            key = (identity, status, grpc_status, flags, grpc)  # raw flags: mapped on a miss
            s = self._cache.get(key)
            if s is None:
                s = self._series(key)
        s.requests.value += 1
        d = s.duration
        d.counts[bucket(d.bounds, duration_ms)] += 1
        d.sum += duration_ms
        d.count += 1
        n = stream.bytes_in
        d = s.request_bytes
        d.counts[bucket(d.bounds, float(n))] += 1
        d.sum += n
        d.count += 1
        n = stream.bytes_out
        d = s.response_bytes
        d.counts[bucket(d.bounds, float(n))] += 1
        d.sum += n
        d.count += 1

    def _series(self, key: tuple[str, int, str, str, bool]) -> _Series:
        identity, status, grpc_status, raw_flags, grpc = key
        flags = envoy_flags(raw_flags)
        g = self._golden
        if self._inbound:
            source = g.peer(identity)
            destination = self._local[0]
            reporter = "destination"
            policy = "mutual_tls" if identity else "none"
        else:
            source, destination = self._local
            reporter = "source"
            policy = UNKNOWN
        values = (reporter, *source, *destination, "grpc" if grpc else "http", str(status),
                  grpc_status or "-", flags, policy)
        f = self._fam
        limit = f.limit
        full = len(f.requests.children) >= limit and values not in f.requests.children
        s = _Series(bounded(f.requests, values, limit, f.overflow),  # type: ignore[arg-type]
                    bounded(f.duration, values, limit, f.overflow),  # type: ignore[arg-type]
                    bounded(f.request_bytes, values, limit, f.overflow),  # type: ignore[arg-type]
                    bounded(f.response_bytes, values, limit, f.overflow))  # type: ignore[arg-type]
        if not full:  # an overflowed key is not cached: the cache stays within the bound
            self._cache[key] = s
        return s


class Golden:
    """The golden metrics of one snapshot: label values resolved from the config, and the
    per-(listener, cluster) recorders.  Rebuilt when the snapshot changes anything it reads
    (`telemetry`, `node`); the families and their series live on in the registry."""

    def __init__(self, families: GoldenFamilies, cfg: ProxyConfig, mt: MetricsTelemetry) -> None:
        self.families = families
        families.limit = mt.max_series_per_family
        self.cfg = mt
        node = cfg.node
        self.node = node
        name = mt.workload or node.name
        app = mt.app
        version = mt.version
        canonical = mt.canonical_service or app or name
        revision = mt.canonical_revision or version or "latest"
        self.cluster = mt.cluster
        self._peers: dict[str, PeerWorkload] = {p.principal: p for p in mt.peers}
        self._peer_sides: dict[str, Side] = {}
        own_identity = mt.principal or UNKNOWN
        self.source_local: Side = (name, canonical, revision, node.namespace, own_identity, app,
                                   version, mt.cluster)
        svc = node.service
        self.destination_local: Side = (
            name, node.namespace, own_identity, app, version,
            self.fqdn(svc, node.namespace) if svc else UNKNOWN, canonical, revision,
            svc or UNKNOWN, node.namespace if svc else UNKNOWN, mt.cluster)
        self._by_workload = {(p.namespace, p.workload): p for p in mt.peers if p.namespace}
        self._locals: dict[str, tuple[Side, Side]] = {}

    def locals_for(self, listener: Listener) -> tuple[Side, Side]:
        """(source side, destination side) of the local workload of `listener`: on a node
        agent a listener carries one of several workloads (`Listener.workload`, ADR 0047),
        named with its labels from `peers`; else the proxy's own workload."""
        key = listener.workload
        own = f"{self.node.namespace}/{self.cfg.workload or self.node.name}"
        if not key or key == own or "/" not in key:
            return self.source_local, self.destination_local
        sides = self._locals.get(key)
        if sides is None:
            ns, name = key.split("/", 1)
            p = self._by_workload.get((ns, name))
            app = p.app if p is not None else ""
            version = p.version if p is not None else ""
            principal = p.principal if p is not None else UNKNOWN
            canonical = (p.canonical_service if p is not None else "") or app or name
            revision = (p.canonical_revision if p is not None else "") or version or "latest"
            source = (name, canonical, revision, ns, principal, app or UNKNOWN,
                      version or UNKNOWN, self.cluster)
            destination = (name, ns, principal, app or UNKNOWN, version or UNKNOWN,
                           self.fqdn(app, ns) if app else UNKNOWN, canonical, revision,
                           app or UNKNOWN, ns if app else UNKNOWN, self.cluster)
            sides = self._locals[key] = (source, destination)
        return sides

    def fqdn(self, service: str, namespace: str) -> str:
        return f"{service}.{namespace}.{self.cfg.service_domain}"

    def peer(self, identity: str) -> Side:
        """The `source_*` values of an inbound caller that presented `identity`."""
        side = self._peer_sides.get(identity)
        if side is not None:
            return side
        if not identity:
            return (UNKNOWN,) * 4 + (UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)
        p = self._peers.get(identity)
        if p is None:
            side = (UNKNOWN, UNKNOWN, "latest", _spiffe_namespace(identity) or UNKNOWN,
                    identity, UNKNOWN, UNKNOWN, self.cluster)
        else:
            side = (p.workload, p.canonical_service or p.app or p.workload,
                    p.canonical_revision or p.version or "latest",
                    p.namespace or _spiffe_namespace(identity) or UNKNOWN, identity,
                    p.app or UNKNOWN, p.version or UNKNOWN, self.cluster)
        if len(self._peer_sides) < 10_000:
            self._peer_sides[identity] = side
        return side

    def destination(self, cluster: Cluster | None) -> Side:
        """The `destination_*` values of requests routed to `cluster` (outbound)."""
        md = cluster.metadata if cluster is not None else None
        if md is None or not (md.service or md.workload):
            name = cluster.name if cluster is not None else UNKNOWN
            return (UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, name, name, "latest", name,
                    UNKNOWN, UNKNOWN)
        ns = md.namespace or self.node.namespace
        workload, labels = md.workload, md.labels
        if not workload and cluster is not None:
            # A Service's cluster names no workload; when all its endpoints are one workload
            # (the common case), it is that one.
            eps = {(e.metadata.workload, tuple(sorted(e.metadata.labels.items())))
                   for e in cluster.endpoints if e.metadata is not None}
            if len(eps) == 1:
                workload, pairs = eps.pop()
                labels = {**dict(pairs), **labels}
        app = labels.get("app", "")
        version = labels.get("version", "")
        svc = md.service
        ids = cluster.tls.expected_spiffe_ids if cluster is not None and cluster.tls else []
        md_workload = workload
        return (md_workload or UNKNOWN, ns if md_workload else UNKNOWN,
                ids[0] if len(ids) == 1 else UNKNOWN, app or UNKNOWN, version or UNKNOWN,
                self.fqdn(svc, ns) if svc else UNKNOWN, svc or md.workload or UNKNOWN,
                version or "latest", svc or UNKNOWN, ns if svc else UNKNOWN, self.cluster)

    def http(self, listener: Listener, cluster: Cluster | None) -> HttpGolden:
        source_local, destination_local = self.locals_for(listener)
        if listener.direction == "inbound":
            return HttpGolden(self, True, destination_local, ())
        return HttpGolden(self, False, source_local, self.destination(cluster))

    def tcp(self, listener: Listener, cluster: Cluster | None, identity: str) -> TcpGolden:
        source_local, destination_local = self.locals_for(listener)
        if listener.direction == "inbound":
            source = self.peer(identity)
            destination = destination_local
            reporter = "destination"
            policy = "mutual_tls" if identity else "none"
        else:
            source, destination = source_local, self.destination(cluster)
            reporter = "source"
            policy = UNKNOWN
        values = (reporter, *source, *destination, "tcp", "-", policy)
        return TcpGolden(self.families, values)


class TcpGolden:
    """One relayed connection's golden series: opened when connected, closed at its end, and
    its bytes added at its end and whenever /metrics is read while it lives (`flush`, run by
    the admin before rendering), so a long connection's bytes show as they move, with no
    timer and nothing per packet."""

    __slots__ = ("_fam", "_received", "_sent", "_values")

    def __init__(self, families: GoldenFamilies, values: tuple[str, ...]) -> None:
        self._fam = families
        self._values = values
        self._received = 0
        self._sent = 0
        """Bytes already added to the counters."""

    def opened(self) -> None:
        f = self._fam
        bounded(f.tcp_opened, self._values, f.limit, f.overflow).value += 1  # type: ignore[union-attr]

    def flush(self, received: int, sent: int) -> None:
        """Add the bytes moved since the last flush (`received`, `sent`: totals so far)."""
        f = self._fam
        v, limit = self._values, f.limit
        if received > self._received:
            bounded(f.tcp_received, v, limit, f.overflow).value += (  # type: ignore[union-attr]
                received - self._received)
            self._received = received
        if sent > self._sent:
            bounded(f.tcp_sent, v, limit, f.overflow).value += sent - self._sent  # type: ignore[union-attr]
            self._sent = sent

    def closed(self, received: int, sent: int) -> None:
        f = self._fam
        bounded(f.tcp_closed, self._values, f.limit, f.overflow).value += 1  # type: ignore[union-attr]
        self.flush(received, sent)


def build_golden(metrics: ProxyMetrics, cfg: ProxyConfig, previous: Golden | None) -> Golden | None:
    """The golden metrics for `cfg` (None when it has no `telemetry.metrics`); `previous` is
    kept when nothing it reads changed, so listener contexts that depend on it are kept too."""
    mt = cfg.telemetry.metrics
    if mt is None:
        return None
    if previous is not None and previous.cfg == mt and previous.node == cfg.node:
        return previous
    fams = previous.families if previous is not None else _families(metrics)
    return Golden(fams, cfg, mt)


def _families(metrics: ProxyMetrics) -> GoldenFamilies:
    fams = getattr(metrics, "golden", None)
    if fams is None:
        fams = GoldenFamilies(metrics)
        metrics.golden = fams  # type: ignore[attr-defined]
    return fams


__all__ = ["HTTP_LABELS", "TCP_LABELS", "Golden", "GoldenFamilies", "HttpGolden", "TcpGolden",
           "build_golden"]
