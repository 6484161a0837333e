"""Config features: named, optional sections of the contract that a proxy announces it takes.

Why: the contract grows.  A proxy built before a section existed rejects that section as an
unknown field, so a control plane must not send it one (ADR 0011).  Each section added after
the first release of the stream is a *feature* here: a name and the schema paths it owns
(`settings.overload`, `listeners[].max_connections`: `[]` stands for every item of a list).
A proxy announces the features of its build in `Hello.features`; the control plane leaves the
paths of every feature the proxy lacks out of that proxy's snapshots and deltas, and its status
says which were withheld.

Adding a section to the contract: add its field to `model.py` with a default that keeps the old
behaviour, add a `Feature` below naming the field's path, document both.  Tests check that
every path here names a field of the model, and that every field added since the stream's first
release belongs to a feature.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any

from tulle.proxyconfig.delta import ENDPOINTS, POSITIONS, VIRTUAL_HOSTS
from tulle.proxyconfig.dns_delta import DNS_HOSTS
from tulle.proxyconfig.telemetry_delta import TELEMETRY_PEERS

SERVING_ACK = "serving-ack"
"""A stream capability, not a section: see its entry in `FEATURES` (ADR 0116)."""


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    paths: tuple[str, ...]
    """Schema paths of the fields this feature adds; `[]` after a name means each list item."""
    summary: str
    drops: str = ""
    """For a feature whose fields *narrow* what a list item selects (a route match's header
    condition): the schema path of those items.  Withholding then removes every item that
    `uses` the feature (its fields set, or a new value of an old field such as `path.type:
    RegularExpression`), then strips the fields (at their defaults) from the items kept.
    Never the condition alone: that would widen the item (a header-selected canary rule
    would take all traffic).  ADR 0016."""
    uses: Callable[[dict[str, Any]], bool] | None = None
    refused_at: tuple[str, ...] = ()
    """For a feature that is never withheld because a proxy lacking it must refuse the
    snapshot instead (`network-authorization`: a TCP port's policy stripped would admit
    everything): the schema paths of the lists whose items `uses` says need it.  Nothing is
    removed by them; they let apply say, before a push, that a proxy of an older build will
    refuse its snapshot (ADR 0125)."""


_MATCHES = "route_tables[].virtual_hosts[].rules[].matches[]"


def _uses_new_match_kinds(match: dict[str, Any]) -> bool:
    path = match.get("path")
    return bool(match.get("headers") or match.get("query_params") or match.get("method")
                or (isinstance(path, dict) and path.get("type") == "RegularExpression"))


def _rule_has_filter(kind: str, rule: dict[str, Any]) -> bool:
    """A rule one of whose filters is of type `kind`: withheld whole (fail closed) when the
    filter changes what the rule does to its requests."""
    return any(isinstance(f, dict) and f.get("type") == kind for f in rule.get("filters") or [])


_NETWORK_FILTERS = ("listeners[].network_filters[]",
                    "listeners[].filter_chains[].network_filters[]")


def _refuses(destination: dict[str, Any]) -> bool:
    return bool(destination.get("refuse"))


_RULES = "route_tables[].virtual_hosts[].rules[]"
_FILTERS = "route_tables[].virtual_hosts[].rules[].filters[]"


def _filter_is(kind: str, f: dict[str, Any]) -> bool:
    """A filter type added after `http-filters` (or `network-filters`): a proxy without its
    feature cannot decode it, so that filter entry (only it) is withheld, or, for the network
    filters that are never withheld, the snapshot is refused."""
    return f.get("type") == kind


FEATURES: tuple[Feature, ...] = (
    Feature("connection-limits", ("settings.max_connections", "listeners[].max_connections"),
            "caps on open downstream connections, per process and per listener"),
    Feature("overload", ("settings.overload",),
            "the overload guard: fd and RSS monitors, 503 OL and stop-accepting thresholds"),
    Feature("path-normalization", ("settings.path_normalization",),
            "request paths made canonical before routing"),
    Feature("tcp-idle-timeout", ("settings.tcp_idle_timeout_ms",),
            "opaque TCP relays closed after an idle period"),
    Feature("http2-limits", ("settings.http2_max_concurrent_streams",
                             "settings.http2_max_premature_resets",
                             "settings.http2_control_frame_burst",
                             "settings.http2_control_frame_rate",
                             "settings.http2_max_queued_control_frames"),
            "HTTP/2 stream and control-frame limits (rapid reset, floods)"),
    Feature("tls-handshake-timeout", ("settings.tls_handshake_timeout_ms",),
            "TLS handshakes on listeners bounded in time and counted against connection caps"),
    Feature("http1-limits", ("settings.max_header_count", "settings.max_chunk_extension_bytes",
                             "settings.max_trailer_bytes"),
            "HTTP/1 header-count, chunk-extension and trailer-size limits"),
    Feature("network-filters", ("listeners[].network_filters",),
            "L4 filters (source_ip, connection_limit, flow_log) on opaque TCP listeners"),
    Feature("http-filters", ("route_tables[].virtual_hosts[].rules[].filters",),
            "HTTP filters on route rules (request and response header modifiers)"),
    # Delta units (ADR 0018): no field of the model, a finer shape of the delta; a proxy
    # lacking one gets the changed resources whole, as before.
    Feature(VIRTUAL_HOSTS, (), "a route table changed only in its virtual hosts is sent as "
            "the changed and removed virtual hosts"),
    Feature(ENDPOINTS, (), "a cluster changed only in its endpoints is sent as its endpoint "
            "list"),
    Feature(POSITIONS, (), "resources added among others carry their index, not the whole "
            "new order"),
    Feature("filter-chains", ("listeners[].filter_chains",),
            "listener filter chains chosen by transport, SNI, ALPN and destination"),
    Feature("tls-sections", ("identities", "trust_bundles", "listeners[].tls.identity",
                             "listeners[].tls.trust_bundle", "clusters[].tls.identity",
                             "clusters[].tls.trust_bundle"),
            "identities and trust bundles as named sections that TLS settings reference"),
    Feature("metadata", ("node.zone", "clusters[].metadata", "clusters[].endpoints[].metadata"),
            "metadata on clusters and endpoints, the node's zone (carried, no behaviour yet)"),
    Feature("route-matches", (f"{_MATCHES}.headers", f"{_MATCHES}.query_params",
                              f"{_MATCHES}.method"),
            "route matches on headers, query parameters, method and path regular expressions",
            drops=_MATCHES, uses=_uses_new_match_kinds),
    Feature("multi-workload", ("listeners[].workload", "clusters[].workload"),
            "a node fronting several workloads: listeners and clusters name the one they "
            "serve"),
    Feature("unresolved-backends", ("clusters[].unresolved",),
            "a cluster standing for a backend that did not resolve: its requests answered 500"),
    Feature("cluster-limits", ("clusters[].limits",),
            "per-cluster connection, pending, request and retry limits (503 UO past them)"),
    Feature("mtls", ("listeners[].tls.min_version", "listeners[].tls.expected_spiffe_ids",
                     "listeners[].filter_chains[].tls.min_version",
                     "clusters[].tls.min_version", "clusters[].tls.expected_spiffe_ids"),
            "mesh mTLS: TLS 1.3 only, the server's SPIFFE ID checked by the client"),
    # Authorization is a new filter *type*, not a field: a proxy without it must never get the
    # config with the filter stripped (that would admit everything), so what uses it is dropped
    # whole -- the rule (its requests then get 404) or the listener (refused) -- fail closed.
    Feature("authorization", (), "the `Authorization` HTTP filter (policies on route rules)",
            drops=_RULES, uses=partial(_rule_has_filter, "Authorization")),
    # Dropping a listener from a delta would leave the proxy's old one (without the filter)
    # in force, so nothing is withheld: a proxy without it refuses the snapshot (a NACK naming
    # the entry) and keeps its last good config.
    Feature("network-authorization", (), "the `authz` network filter on opaque TCP listeners",
            uses=partial(_filter_is, "authz"), refused_at=_NETWORK_FILTERS),
    Feature("request-redirect", (), "the `RequestRedirect` HTTP filter (answered locally)",
            drops=_FILTERS, uses=partial(_filter_is, "RequestRedirect")),
    Feature("backend-request-timeout",
            ("route_tables[].virtual_hosts[].rules[].backend_timeout_ms",),
            "a per-try timeout on route rules (Gateway API `timeouts.backendRequest`)"),
    Feature("request-mirror", (), "the `RequestMirror` HTTP filter (fire-and-forget copies)",
            drops=_FILTERS, uses=partial(_filter_is, "RequestMirror")),
    Feature("backend-filters", ("route_tables[].virtual_hosts[].rules[].backends[].filters",),
            "header modifiers on individual backends of a rule"),
    # Without the rewrite the upstream would get a path it was never meant to see: the rule
    # goes whole (its requests take the next matching rule, else 404), as for authorization.
    Feature("url-rewrite", (), "the `URLRewrite` HTTP filter (hostname and path rewrites)",
            drops=_RULES, uses=partial(_rule_has_filter, "URLRewrite")),
    Feature("ca-rotation", (), "stream messages `TrustUpdate` / `TrustAck`: the mesh's trust "
            "bundle replaced in force, renewal on request (CA rotation, ADR 0035)"),
    # A proxy without it cannot decode the new `lb_policy` values: the field goes too, and
    # that proxy balances round robin (traffic still flows, to the same endpoints).
    Feature("load-balancing", ("clusters[].lb_policy", "clusters[].lb"),
            "balancers beyond round robin (random, least request, peak-EWMA, ring hash, "
            "Maglev), hash policies, slow start, locality, panic threshold"),
    Feature("outlier-detection", ("clusters[].outlier_detection",),
            "passive health: endpoints ejected by their requests' outcomes"),
    Feature("health-checks", ("clusters[].health_check",),
            "active health: HTTP, gRPC health and TCP probes of each endpoint"),
    # A proxy without retries runs the rule with one try (and no budget): what it did before.
    Feature("retries", ("route_tables[].virtual_hosts[].rules[].retry", "clusters[].retry_budget"),
            "retries of failed tries on route rules, and per-cluster retry budgets"),
    Feature("stream-idle-timeout",
            ("route_tables[].virtual_hosts[].rules[].stream_idle_timeout_ms",),
            "a per-request idle timeout on route rules"),
    Feature("dns", ("dns",), "the mesh DNS resolver: Services' names answered with their "
            "virtual IPs, other names forwarded (ADR 0042)"),
    Feature(DNS_HOSTS, (), "a dns section changed only in its hosts is sent as the added, "
            "changed and removed hosts"),
    # Chaos, not protection: a proxy lacking it runs the rule without faults (entry withheld).
    Feature("fault-injection", (), "the `FaultInjection` HTTP filter (delays and aborts)",
            drops=_FILTERS, uses=partial(_filter_is, "FaultInjection")),
    # Withheld entry by entry (the rule still serves, unlimited) rather than dropping the rule,
    # which would answer every request 404: a limit is protection, and its absence is listed.
    Feature("rate-limit", (), "the `RateLimit` HTTP filter (local buckets, global Redis window)",
            drops=_FILTERS, uses=partial(_filter_is, "RateLimit")),
    # As network-authorization: not withheld, a proxy lacking it refuses the snapshot (NACK).
    Feature("network-rate-limit", (), "the `rate_limit` network filter (new TCP connections "
            "per interval)", uses=partial(_filter_is, "rate_limit"), refused_at=_NETWORK_FILTERS),
    Feature("stats-reports", (), "stream messages `StatsRequest` / `StatsReport`: traffic "
            "summaries for `tulle stat` (ADR 0046)"),
    # As rate-limit: a proxy lacking it would talk to Redis without AUTH or TLS, so the entry
    # is withheld (the rule serves unlimited, listed as withheld) rather than half-applied.
    Feature("rate-limit-redis-auth", tuple(f"{_FILTERS}.global.{k}" for k in (
                "username", "password_file", "tls")), "`RateLimit.global` with `username`, "
            "`password_file` and `tls`: Redis AUTH and TLS",
            drops=_FILTERS, uses=lambda f: f.get("type") == "RateLimit" and any(
                (f.get("global") or {}).get(k) for k in ("username", "password_file", "tls"))),
    Feature("tap", (), "stream messages `TapStart` / `TapStop` / `TapEvents`: live request "
            "records for `tulle tap`, `tulle top` and the dashboard (ADR 0056)"),
    # Each signal of the `telemetry` section is a feature of its own (`telemetry` is the
    # section): a proxy without golden-metrics keeps its own tulle_proxy_* metrics.
    Feature("golden-metrics", ("telemetry.metrics",), "`telemetry.metrics`: Istio's standard "
            "metrics and labels (ADR 0053)"),
    Feature(TELEMETRY_PEERS, (), "a telemetry section changed only in `metrics.peers` is sent "
            "as the peers added, changed and removed"),
    Feature("telemetry", ("telemetry",), "the `telemetry` section; each of its parts is a "
            "feature of its own"),
    Feature("tracing", ("telemetry.tracing",), "W3C/B3 propagation, sampled spans, OTLP "
            "export (ADR 0055)"),
    # A proxy without it answers every pod's bare names in the node's first namespace only;
    # the fully qualified names still resolve.  Withheld, never refused.
    Feature("dns-clients", ("dns.clients",), "per source address, the namespace whose "
            "Services answer bare names (a node agent's pods, ADR 0050)"),
    Feature("access-log", ("telemetry.access_log",),
            "access logs: one record per HTTP request to stdout, a file or OTLP (ADR 0054)"),
    Feature("flow-logs", ("telemetry.flow_log",),
            "flow logs: one record per relayed TCP connection, at its end and periodically "
            "(ADR 0054)"),
    Feature("addressed-service", ("route_tables[].virtual_hosts[].service",),
            "the Service a virtual host's requests are addressed to: `tulle stat` counts them "
            "under it as well as under their backends' Services"),
    # As load-balancing: a proxy lacking it balances the rule's requests as usual (no
    # affinity, no token issued); the entry alone is withheld and listed.
    Feature("session-persistence", (), "the `SessionPersistence` HTTP filter (Gateway API "
            "`sessionPersistence`: a cookie or header pins a client to an endpoint, ADR 0058)",
            drops=_FILTERS, uses=partial(_filter_is, "SessionPersistence")),
    Feature("dual-stack", ("listeners[].additional_addresses", "dns.additional_addresses"),
            "listeners and the DNS resolver served on more than one address (IPv4 and IPv6)"),
    # Without it an authorization rule's namespaces and service accounts read a SPIFFE ID of
    # any trust domain, as before (the field is stripped; ADR 0096).
    Feature("authz-trust-domains", tuple(f"{where}.policies[].rules[].sources[].trust_domains"
                                         for where in (_FILTERS, "listeners[].network_filters[]",
                                                       "listeners[].filter_chains[]"
                                                       ".network_filters[]")),
            "`trust_domains` of an authorization source: its `namespaces` and "
            "`service_accounts` read SPIFFE IDs of the mesh's trust domains only"),
    # Without it a node agent's pod listener takes any source (ADR 0098): withheld, listed.
    Feature("listener-sources", ("listeners[].sources",),
            "`Listener.sources`: a node agent's per-pod listener takes its pod's connections "
            "only"),
    # Nothing to withhold or gate: `StatsRow.grpc_failures` is an optional field that a
    # control plane from before it ignores.  Announced so that `tulle get proxies` says which
    # proxies' failed gRPC calls `tulle stat` counts (ADR 0112).
    Feature("stats-grpc-status", (), "`StatsReport` rows carry `grpc_failures`: gRPC calls "
            "failed by their gRPC status, not their HTTP status; failures in `tulle stat`"),
    # Without it a node agent relays a call to a meshed pod's undeclared port as passthrough
    # (ALLOW_ANY), as before: the refusing destinations are dropped whole (a destination
    # stripped of `refuse` alone names nothing and is invalid), withheld and listed (ADR 0114).
    Feature("refused-destinations", ("listeners[].destinations[].refuse",),
            "`Destination.refuse`: a node agent refuses a meshed pod's address on the ports "
            "it does not declare instead of relaying it past the pod's inbound side",
            drops="listeners[].destinations[]", uses=_refuses),
    # Withheld, a proxy from before it drains at once on SIGTERM, as it always did.
    Feature("drain-propagation", ("settings.drain_propagation_ms",),
            "how long a stopping proxy keeps accepting after `Draining` (ADR 0113)"),
    # No field: the control plane gates presence on it (ADR 0116).  A proxy from before it
    # joins its Services' endpoints at its hello, as it always did.
    Feature(SERVING_ACK, (), "the proxy's ACK says its listeners serve the version, and its "
            "hello's `last_version` names a version it serves now: its workloads join their "
            "Services' endpoints at its first ACK, or at the hello when it names one"),
)
"""Every feature this build's contract has, in the order they were added."""

BY_NAME = {f.name: f for f in FEATURES}
SUPPORTED: tuple[str, ...] = tuple(f.name for f in FEATURES)
"""What a proxy of this build announces: it takes every section its model has."""


def lacking(announced: Iterable[str]) -> tuple[Feature, ...]:
    """The features this contract has and a proxy that announced `announced` does not."""
    have = set(announced)
    return tuple(f for f in FEATURES if f.name not in have)


def withheld_from(announced: Iterable[str]) -> tuple[Feature, ...]:
    """What a control plane leaves out of the snapshots of a proxy that announced `announced`:
    each feature it lacks that owns fields (`paths`) or drops the items using it (`drops`:
    an `Authorization` rule, a `SessionPersistence` filter entry).  A lacking feature with
    neither has nothing to leave out: a delta unit, a stream capability (`tap`,
    `serving-ack`), or one whose absence is a NACK by design (`network-authorization`).
    Leaving out a `drops` feature matters as much as a field: an older build's decoder
    refuses an item of a type it does not know, and every later snapshot with it (the proxy
    then takes no change at all)."""
    return tuple(f for f in lacking(announced) if f.paths or f.drops)


def refused_by(announced: Iterable[str]) -> tuple[Feature, ...]:
    """The features a proxy that announced `announced` lacks and that are not withheld from
    it: a snapshot using one (`refused_at`) is one it refuses whole, a NACK (ADR 0125)."""
    return tuple(f for f in lacking(announced) if f.refused_at)


def _strip(node: Any, segments: list[str]) -> None:
    if not isinstance(node, dict):
        return
    head, rest = segments[0], segments[1:]
    if head.endswith("[]"):
        items = node.get(head[:-2])
        if isinstance(items, list) and rest:
            for item in items:
                _strip(item, rest)
        elif rest == [] and head[:-2] in node:
            del node[head[:-2]]
        return
    if not rest:
        node.pop(head, None)
    else:
        _strip(node.get(head), rest)


def _drop(node: Any, segments: list[str], uses: Callable[[dict[str, Any]], bool]) -> None:
    """Remove the items at `segments` (the last one a list) that `uses` says need a feature."""
    if not isinstance(node, dict):
        return
    head, rest = segments[0], segments[1:]
    child = node.get(head.removesuffix("[]"))
    if not isinstance(child, list):
        if not head.endswith("[]"):
            _drop(child, rest, uses)
        return
    if rest:
        for item in child:
            _drop(item, rest, uses)
    else:
        child[:] = [item for item in child if not (isinstance(item, dict) and uses(item))]


def withhold_config(doc: dict[str, Any], missing: Iterable[Feature]) -> None:
    """Remove the paths of `missing` from a plain `ProxyConfig` document, in place.  Every
    feature's items are dropped before any field is stripped: a drop reads fields another
    feature strips (an `Authorization` filter in a rule's `filters`)."""
    missing = tuple(missing)
    for f in missing:
        if f.drops and f.uses is not None:
            _drop(doc, f.drops.split("."), f.uses)
    for f in missing:
        for p in f.paths:
            _strip(doc, p.split("."))


COLLECTIONS = ("listeners", "route_tables", "clusters", "identities", "trust_bundles")


PATCHES = {("route_tables[]", "virtual_hosts[]"): ("virtual_hosts", "upsert"),
           ("clusters[]", "endpoints[]"): ("endpoints", "endpoints")}
"""Delta units (`delta.py`) by the schema path of what they carry: (the `Delta` field, the
list in each of its items)."""


def _in_delta(doc: dict[str, Any], segments: list[str],
              act: Callable[[Any, list[str]], None]) -> bool:
    """Run `act` on every place of a `Delta` document that carries the collection path
    `segments` (`clusters[]...`): each upserted resource and what the delta units carry of it
    (virtual hosts, endpoints).  False when `segments` does not start at a collection."""
    head = segments[0]
    if not (head.endswith("[]") and head[:-2] in COLLECTIONS):
        return False
    for item in (doc.get(head[:-2]) or {}).get("upsert") or []:
        act(item, segments[1:])
    unit = PATCHES.get((head, segments[1])) if len(segments) > 2 else None
    if unit is not None:
        for patch in doc.get(unit[0]) or []:
            for item in patch.get(unit[1]) or []:
                act(item, segments[2:])
    return True


def withhold_delta(doc: dict[str, Any], missing: Iterable[Feature]) -> None:
    """Remove the paths of `missing` from a plain `Delta` document, in place: a singleton's
    path applies to the singleton sent whole, a collection's to each upserted resource and to
    what the delta units carry of it (virtual hosts, endpoints).  Drops first, as in
    `withhold_config`."""
    missing = tuple(missing)
    for f in missing:
        if f.drops and f.uses is not None:
            _in_delta(doc, f.drops.split("."), partial(_drop, uses=f.uses))
    for f in missing:
        for p in f.paths:
            segments = p.split(".")
            if _in_delta(doc, segments, _strip):
                continue
            if len(segments) > 1:
                _strip(doc.get(segments[0]), segments[1:])
            else:
                doc.pop(segments[0], None)  # a whole top-level section
                doc.pop(f"{segments[0]}_removed", None)  # and its removal flag (`dns`)
                doc.pop(f"{segments[0]}_hosts", None)  # and its delta unit (`dns`)
