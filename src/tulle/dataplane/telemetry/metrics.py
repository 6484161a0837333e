"""Hand-rolled metrics: counters, gauges and histograms rendered as Prometheus text.

prometheus_client costs 0.3-1.3 us per update; a slot increment costs ~0.05 us.  The hot path
holds *children* (one labelled series) resolved once per listener/cluster and bumps their
`value` attribute directly; nothing is locked because each worker process has its own registry
and the event loop is single-threaded.

Names are the proxy's own (`tulle_proxy_*`); the Istio-compatible golden metrics
(`istio_requests_total` with source/destination labels, `telemetry/golden.py`) are families of
the same registry.  `Registry.render` writes Prometheus text or OpenMetrics (the admin
/metrics negotiates by `Accept`).
"""

from __future__ import annotations

from collections.abc import Iterable

from tulle.dataplane.telemetry.addressed import Addressed
from tulle.dataplane.telemetry.series import CounterChild as CounterChild  # noqa: PLC0414 (re-exported)
from tulle.dataplane.telemetry.series import HistogramChild as HistogramChild  # noqa: PLC0414
from tulle.proxyconfig.stats import DURATION_BUCKETS_MS

LOOP_LAG_BUCKETS_MS = (1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
                       5000.0)
"""`tulle_proxy_event_loop_lag_milliseconds`: from the loop timers' own resolution (1 ms) to a
loop held for seconds (ADR 0086)."""

# DURATION_BUCKETS_MS: milliseconds, Istio's request_duration_milliseconds boundaries; part of
# the contract since the stream's stats reports carry these buckets' counts (ADR 0046).


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str, openmetrics: bool) -> str:
    """HELP text: `\\` and newlines escaped (and `"` in OpenMetrics, which escapes it too)."""
    v = v.replace("\\", "\\\\").replace("\n", "\\n")
    return v.replace('"', '\\"') if openmetrics else v


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


class GaugeChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0



class _Family:
    kind = ""

    def __init__(self, name: str, help_: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.help = help_
        self.labelnames = labels
        self.children: dict[tuple[str, ...], object] = {}

    def header(self, openmetrics: bool = False) -> list[str]:
        """HELP and TYPE lines.  OpenMetrics names a counter family without its `_total`
        suffix (its samples keep it); a counter whose name lacks the suffix is `unknown`
        there, since OpenMetrics requires it of counter samples."""
        name, kind = self.name, self.kind
        if openmetrics:
            if kind == "counter":
                if name.endswith("_total"):
                    name = name[:-6]
                else:
                    kind = "unknown"
            return [f"# TYPE {name} {kind}", f"# HELP {name} {_escape_help(self.help, True)}"]
        return [f"# HELP {name} {_escape_help(self.help, False)}", f"# TYPE {name} {kind}"]


class Counter(_Family):
    kind = "counter"

    def labels(self, *values: str) -> CounterChild:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = CounterChild()
        return child  # type: ignore[return-value]

    def render(self) -> Iterable[str]:
        for values, child in sorted(self.children.items()):
            yield f"{self.name}{_labels(self.labelnames, values)} {child.value}"  # type: ignore[attr-defined]


class Gauge(Counter):
    kind = "gauge"

    def labels(self, *values: str) -> GaugeChild:  # type: ignore[override]
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = GaugeChild()
        return child  # type: ignore[return-value]


class Histogram(_Family):
    kind = "histogram"

    def __init__(self, name: str, help_: str, labels: tuple[str, ...],
                 buckets: tuple[float, ...] = DURATION_BUCKETS_MS) -> None:
        super().__init__(name, help_, labels)
        self.buckets = buckets

    def labels(self, *values: str) -> HistogramChild:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = HistogramChild(self.buckets)
        return child  # type: ignore[return-value]

    def render(self) -> Iterable[str]:
        for values, c in sorted(self.children.items()):
            assert isinstance(c, HistogramChild)
            acc = 0
            for bound, n in zip(c.bounds, c.counts, strict=False):
                acc += n
                le = 'le="' + _num(bound) + '"'
                yield f"{self.name}_bucket{_labels(self.labelnames, values, le)} {acc}"
            acc += c.counts[-1]
            inf = 'le="+Inf"'
            yield f"{self.name}_bucket{_labels(self.labelnames, values, inf)} {acc}"
            yield f"{self.name}_sum{_labels(self.labelnames, values)} {_num(c.sum)}"
            yield f"{self.name}_count{_labels(self.labelnames, values)} {c.count}"


class Registry:
    """All metric families of one proxy process."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def _add(self, fam: _Family) -> _Family:
        existing = self._families.get(fam.name)
        if existing is not None:
            return existing
        self._families[fam.name] = fam
        return fam

    def counter(self, name: str, help_: str, labels: tuple[str, ...] = ()) -> Counter:
        return self._add(Counter(name, help_, labels))  # type: ignore[return-value]

    def gauge(self, name: str, help_: str, labels: tuple[str, ...] = ()) -> Gauge:
        return self._add(Gauge(name, help_, labels))  # type: ignore[return-value]

    def histogram(self, name: str, help_: str, labels: tuple[str, ...] = (),
                  buckets: tuple[float, ...] = DURATION_BUCKETS_MS) -> Histogram:
        return self._add(Histogram(name, help_, labels, buckets))  # type: ignore[return-value]

    def render(self, openmetrics: bool = False) -> str:
        """The exposition: Prometheus text 0.0.4, or OpenMetrics 1.0.0 (the same samples,
        counter families named without `_total`, and the closing `# EOF`)."""
        lines: list[str] = []
        for fam in self._families.values():
            if not fam.children:
                continue
            lines.extend(fam.header(openmetrics))
            lines.extend(fam.render())  # type: ignore[attr-defined]
        if openmetrics:
            lines.append("# EOF")
        return "\n".join(lines) + "\n"


class ProxyMetrics:
    """The proxy's metric families, created once per process."""

    def __init__(self, registry: Registry | None = None) -> None:
        r = self.registry = registry or Registry()
        self.requests = r.counter("tulle_proxy_requests_total",
                                  "HTTP requests completed, by listener, cluster and status code.",
                                  ("listener", "cluster", "response_code", "response_flags"))
        self.duration = r.histogram("tulle_proxy_request_duration_milliseconds",
                                    "Time from the request's first byte to the response's last.",
                                    ("listener", "cluster"))
        self.connections_active = r.gauge("tulle_proxy_downstream_connections_active",
                                          "Open downstream connections.", ("listener",))
        self.connections_total = r.counter("tulle_proxy_downstream_connections_total",
                                           "Accepted downstream connections.", ("listener",))
        self.bytes_received = r.counter("tulle_proxy_downstream_bytes_received_total",
                                        "Bytes read from downstream clients.", ("listener",))
        self.bytes_sent = r.counter("tulle_proxy_downstream_bytes_sent_total",
                                    "Bytes written to downstream clients.", ("listener",))
        self.protocol_errors = r.counter("tulle_proxy_protocol_errors_total",
                                         "Malformed or hostile downstream input, by kind.",
                                         ("listener", "kind"))
        self.filter_errors = r.counter("tulle_proxy_filter_errors_total",
                                       "HTTP filters that raised on a request (answered 500).",
                                       ("listener", "filter"))
        self.mirror_requests = r.counter(
            "tulle_proxy_mirror_requests_total",
            "Requests mirrored (RequestMirror) to a cluster, by outcome: sent, dropped (over "
            "the in-flight or body bound), failed (no endpoint, error, timeout).",
            ("cluster", "outcome"))
        self.upstream_connect_failures = r.counter(
            "tulle_proxy_upstream_connect_failures_total",
            "Failed upstream connection attempts (refused, unreachable, timed out).", ("cluster",))
        self.upstream_connections_active = r.gauge(
            "tulle_proxy_upstream_connections_active", "Open upstream connections.", ("cluster",))
        self.upstream_connections_total = r.counter(
            "tulle_proxy_upstream_connections_total", "Upstream connections opened.", ("cluster",))
        self.upstream_overflow = r.counter(
            "tulle_proxy_upstream_overflow_total",
            "Cluster limits reached (clusters[].limits), by limit: requests, pending and "
            "retries failed with 503 UO; connections not opened (the request waited).",
            ("cluster", "limit"))
        self.tcp_connections = r.counter("tulle_proxy_tcp_connections_total",
                                         "Opaque TCP connections relayed.", ("listener", "cluster"))
        self.tcp_bytes = r.counter("tulle_proxy_tcp_bytes_total",
                                   "Opaque TCP bytes relayed, by direction.",
                                   ("listener", "cluster", "direction"))
        self.protocol_detected = r.counter(
            "tulle_proxy_protocol_detected_total",
            "Connections on auto listeners, by what detection decided (http1, http2, tls, tcp, "
            "opaque: not sniffed by port, timeout: the client sent nothing in time, partial: it "
            "stopped mid-prefix).",
            ("listener", "protocol"))
        self.tcp_idle_timeouts = r.counter(
            "tulle_proxy_tcp_idle_timeouts_total",
            "Opaque TCP relays closed by settings.tcp_idle_timeout_ms.", ("listener", "cluster"))
        self.tcp_config_closes = r.counter(
            "tulle_proxy_tcp_config_closes_total",
            "Open opaque TCP relays a config swap ended, by listener and reason (revoked: the "
            "new authorization denies it; source_refused, destination_refused: the listener's "
            "new admission refuses it; no_filter_chain, no_destination: no way in for it any "
            "more; listener_removed).", ("listener", "reason"))
        self.http_config_closes = r.counter(
            "tulle_proxy_http_config_closes_total",
            "Open downstream HTTP connections a config swap closed (idle) or drained (busy) "
            "because the listener's new admission refuses them, by listener and reason "
            "(source_refused, destination_refused).", ("listener", "reason"))
        self.config_reloads = r.counter("tulle_proxy_config_reloads_total",
                                        "Configuration swaps, by result.", ("result",))
        self.connections_overflow = r.counter(
            "tulle_proxy_downstream_connections_overflow_total",
            "Downstream connections closed at accept, by reason (listener_limit, process_limit, "
            "overload).", ("listener", "reason"))
        self.overload_state = r.gauge(
            "tulle_proxy_overload_state",
            "Overload guard state: 0 normal, 1 reject_requests, 2 stop_accepting.")
        self.overload_pressure = r.gauge(
            "tulle_proxy_overload_pressure",
            "Resource pressure (used / limit) at the last sample, by monitor.", ("resource",))
        self.event_loop_lag = r.histogram(
            "tulle_proxy_event_loop_lag_milliseconds",
            "How late the event loop ran the proxy's periodic tick (the connection deadline "
            "sweep, every second by default): a pause that requests arriving meanwhile waited "
            "through before the proxy read them.", (), LOOP_LAG_BUCKETS_MS)
        self.overload_actions = r.counter(
            "tulle_proxy_overload_actions_total",
            "Overload actions taken (reject_request, disable_keepalive).", ("action",))
        self.network_filter_rejections = r.counter(
            "tulle_proxy_network_filter_rejections_total",
            "Opaque TCP connections a network filter refused, by filter and reason.",
            ("listener", "filter", "reason"))
        self.addressed = Addressed()
        """Requests by the Service they were addressed to, where a route sent them to another
        Service's backends (not exposed; `tulle stat`'s summary reads it, `addressed.py`)."""
        self.grpc_failed: dict[tuple[str, str], CounterChild] = {}
        """By (listener, cluster): the gRPC calls whose HTTP status was not a failure and whose
        gRPC status was not OK (`RequestStats.count_grpc`).  Not exposed (the golden metrics'
        `grpc_response_status` says the same per status); `tulle stat`'s summary reads it
        (ADR 0112)."""
        self.route_requests = r.counter(
            "tulle_proxy_route_requests_total",
            "HTTP requests routed, by route table and route (the routes of the snapshot in "
            "force; a route's count survives swaps while its name does).",
            ("route_table", "route"))
        self.authz_decisions = r.counter(
            "tulle_proxy_authz_decisions_total",
            "Authorization decisions (HTTP requests and opaque TCP connections), by listener, "
            "deciding policy, its action and the result (allow, deny, audit, dry_run_deny).",
            ("listener", "policy", "action", "result"))
        self.faults_injected = r.counter(
            "tulle_proxy_faults_injected_total",
            "Faults injected by FaultInjection filters, by policy and fault (abort, delay).",
            ("listener", "policy", "fault"))
        self.rate_limited = r.counter(
            "tulle_proxy_rate_limited_total",
            "Requests answered 429 by RateLimit filters, by policy and scope (local, global).",
            ("listener", "policy", "scope"))
        self.rate_limit_backend_failures = r.counter(
            "tulle_proxy_rate_limit_backend_failures_total",
            "Global rate-limit checks Redis did not answer in time (failure_mode applied).",
            ("listener", "policy"))
        self.network_filter_errors = r.counter(
            "tulle_proxy_network_filter_errors_total",
            "Network filter hooks that raised (the connection is reset), by filter and hook.",
            ("listener", "filter", "hook"))
        self.upstream_peer_identity_rejected = r.counter(
            "tulle_proxy_upstream_peer_identity_rejected_total",
            "Upstream mTLS connections refused because the server's SPIFFE ID is not one "
            "expected for the cluster (also counted as connect failures).", ("cluster",))
        self.upstream_retries = r.counter(
            "tulle_proxy_upstream_retries_total",
            "Retries a route's retry policy made to a cluster (within its budget), by what the "
            "failed try got (a status code, or the error's response flag); one the cluster's "
            "max_retries refused is also in tulle_proxy_upstream_overflow_total.",
            ("cluster", "reason"))
        self.upstream_retry_budget_exhausted = r.counter(
            "tulle_proxy_upstream_retry_budget_exhausted_total",
            "Retries not made because the cluster's retry budget was spent.", ("cluster",))
        self.config_info = r.gauge(
            "tulle_proxy_config_info",
            "The snapshot in force: 1 for its version (one series).", ("version",))
        self.upstream_retries_exhausted = r.counter(
            "tulle_proxy_upstream_retries_exhausted_total",
            "Requests whose last try failed after all its retries were used (flag URX).",
            ("cluster",))
