"""The proxy configuration contract: what a proxy runs, and nothing about how intent was written.

The control plane compiles user resources into one `ProxyConfig` per proxy and pushes it; a
static file in the same shape runs a proxy without any control plane (`tulle proxy run
--config`).  Every field here is documented in `docs/reference/proxyconfig.md`; a test keeps the
two in step.

Rules of this module:

* Values are frozen `msgspec.Struct`s: cheap to decode on the proxy, immutable once built, and
  safe to share between the old and new snapshot during a swap.
* Names are the join keys.  Listeners name a route table or a cluster; routes name clusters.
  State that must survive a swap (connection pools, health, rate-limit buckets) is keyed by the
  same names.
* Durations are integer milliseconds (`*_ms`); sizes are integer bytes (`*_bytes`).  Zero means
  "disabled" where the field says so, never "immediately".
* Routing is shaped after Gateway API `HTTPRoute` rules (matches + weighted backends) so the
  traffic-management policies land as new optional fields, not a redesign.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta

from tulle.proxyconfig.dns_config import DNS, DNSHost
from tulle.proxyconfig.filters import HTTPFilter
from tulle.proxyconfig.health import HealthCheck, OutlierDetection
from tulle.proxyconfig.network import NetworkFilterConfig
from tulle.proxyconfig.retry import RetryBudget, RetryPolicy
from tulle.proxyconfig.settings import Overload, PathNormalization, Settings
from tulle.proxyconfig.telemetry import Telemetry
from tulle.proxyconfig.values import Base as _Base
from tulle.proxyconfig.values import Millis, Name, Port, PortOrZero

CONFIG_API_VERSION: Final = "proxy.tulle.dev/v1alpha1"


class Node(_Base, frozen=True, kw_only=True):
    """Who this proxy is: the workload it fronts.  Used in metrics labels and logs."""

    name: str = "proxy"
    namespace: str = "default"
    service: str = ""
    """The service the local workload belongs to (the `destination_service` of inbound traffic)."""
    zone: str = ""
    """Locality of the node (e.g. `eu-west-1a`): the zone clusters with `lb.locality_aware`
    prefer (ADR 0038); shown in /config_dump."""


class Admin(_Base, frozen=True, kw_only=True):
    """The admin endpoint: /ready, /metrics, /config_dump, /clusters.  Loopback by default."""

    address: str = "127.0.0.1"
    port: PortOrZero = 15000
    """0 disables the admin endpoint."""


class TLSContext(_Base, frozen=True, kw_only=True):
    """Certificates for a TLS listener or a TLS upstream (files on disk, PEM)."""

    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    """Trust anchors to verify the peer with; empty means "do not verify" (upstream only)."""
    alpn: list[str] = msgspec.field(default_factory=list)
    """ALPN protocols to offer, in preference order, e.g. ["h2", "http/1.1"]."""
    server_name: str = ""
    """SNI to send upstream; empty sends none."""
    identity: str = ""
    """Name of an `identities` section: the certificate chain and key to present, instead of
    `cert_file` / `key_file` (not both)."""
    trust_bundle: str = ""
    """Name of a `trust_bundles` section: the CAs to verify the peer with, instead of `ca_file`
    (not both)."""
    min_version: Literal["1.2", "1.3"] = "1.2"
    """Lowest TLS version accepted (feature `mtls`); mesh mTLS uses "1.3"."""
    expected_spiffe_ids: list[str] = msgspec.field(default_factory=list)
    """Upstream only (feature `mtls`): the server's certificate must carry exactly one URI SAN,
    one of these SPIFFE IDs (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`); it replaces the host
    name check and needs a `trust_bundle` or `ca_file`.  Empty: no SPIFFE check.  With it
    and no `alpn`, a `tcp` cluster offers ALPN `tulle-tcp` (ADR 0030)."""


class Endpoint(_Base, frozen=True, kw_only=True):
    """One address of a cluster."""

    address: str
    """An IP address or a host name (resolved once per snapshot)."""
    port: Port
    weight: Annotated[int, Meta(ge=1, le=1_000_000)] = 1
    zone: str = ""
    metadata: Metadata | None = None
    """Who this endpoint is (service, namespace, workload, labels).  Carried and shown in
    /config_dump; no behaviour yet."""


class ClusterLimits(_Base, frozen=True, kw_only=True):
    """Per-cluster thresholds (Envoy's circuit breakers, with its defaults).  A request past a
    limit fails at once with 503 and response flag `UO`, counted in
    `tulle_proxy_upstream_overflow_total`; a connection past `max_connections` is not opened
    (the request waits for one to free up, as a pending request)."""

    max_connections: Annotated[int, Meta(ge=1, le=1_000_000)] = 1024
    """Upstream connections open or being opened to all endpoints of the cluster.  A pool with
    no connection at all still opens one, so a request never waits for another pool."""
    max_pending_requests: Annotated[int, Meta(ge=0, le=1_000_000)] = 1024
    """Requests waiting for a connection (being dialled, or busy at the limits); 0: none may
    wait, a request is sent only on a free connection."""
    max_requests: Annotated[int, Meta(ge=1, le=1_000_000)] = 1024
    """Requests in flight to the cluster."""
    max_retries: Annotated[int, Meta(ge=0, le=1_000_000)] = 3
    """Retries in flight to the cluster (a reused connection found closed is replayed once and
    counts too); 0: no retries."""


class HashPolicy(_Base, frozen=True, kw_only=True):
    """What a consistent-hashing balancer (`ring_hash`, `maglev`) hashes for a request."""

    type: Literal["header", "cookie", "source_ip", "query_parameter"]
    name: str = ""
    """The header, cookie or query parameter; empty for `source_ip`."""


class LoadBalancing(_Base, frozen=True, kw_only=True):
    """Settings of a cluster's balancer (feature `load-balancing`, ADR 0038)."""

    hash_policies: list[HashPolicy] = msgspec.field(default_factory=list)
    """For `ring_hash` / `maglev` (required there, refused elsewhere): the first that finds a
    value in the request gives its key; a request none applies to is balanced at random."""
    ring_points: Annotated[int, Meta(ge=1, le=4096)] = 160
    """Points per unit of weight on the `ring_hash` ring (Ketama's 160): fixed per endpoint,
    so an endpoint leaving moves only its own keys.  At most 1,048,576 points in all."""
    maglev_table_size: Annotated[int, Meta(ge=7, le=65_537)] = 8191
    """A prime."""
    choice_count: Annotated[int, Meta(ge=2, le=16)] = 2
    """Endpoints drawn per pick by `least_request` and `peak_ewma`."""
    ewma_decay_ms: Annotated[int, Meta(ge=1, le=600_000)] = 10_000
    """How fast `peak_ewma`'s latency estimate of an endpoint fades."""
    slow_start_window_ms: Annotated[int, Meta(ge=0, le=3_600_000)] = 0
    """A new endpoint's weight ramps over this long (0: off).  Not for hashing balancers."""
    slow_start_min_percent: Annotated[int, Meta(ge=1, le=100)] = 10
    locality_aware: bool = False
    """Prefer endpoints in the node's zone; spill over as the zone's healthy share drops."""
    panic_threshold_percent: Annotated[int, Meta(ge=0, le=100)] = 50
    """With fewer healthy endpoints than this, every endpoint is used (0: never)."""


class Cluster(_Base, frozen=True, kw_only=True):
    """A set of interchangeable endpoints and how to talk to them."""

    name: Name
    endpoints: list[Endpoint] = msgspec.field(default_factory=list)
    protocol: Literal["http1", "http2", "tcp"] = "http1"
    """Upstream protocol.  `http2` means h2c prior knowledge, or ALPN h2 when `tls` is set."""
    lb_policy: Literal["round_robin", "random", "least_request", "peak_ewma", "ring_hash",
                       "maglev"] = "round_robin"
    """Values other than `round_robin`: feature `load-balancing`."""
    connect_timeout_ms: Annotated[int, Meta(ge=1, le=600_000)] = 1000
    max_idle_per_endpoint: Annotated[int, Meta(ge=0, le=100_000)] = 64
    """HTTP/1 keep-alive connections kept idle per endpoint; 0 disables reuse."""
    idle_timeout_ms: Millis = 60_000
    """Idle upstream connections are closed after this long; 0 keeps them until the peer closes."""
    max_concurrent_streams: Annotated[int, Meta(ge=1, le=1_000_000)] = 100
    """HTTP/2 streams per upstream connection before another connection is opened."""
    tls: TLSContext | None = None
    metadata: Metadata | None = None
    """What this cluster is (service, namespace, labels).  Carried and shown in /config_dump;
    no behaviour yet."""
    workload: str = ""
    """On a node that fronts several workloads: `namespace/name` of the one this cluster serves
    (its inbound side); empty: shared by every workload of the node, or a single-workload
    proxy."""
    unresolved: bool = False
    """Stands for a backend the control plane could not resolve (Gateway API: a backendRef to a
    Service that does not exist or is not permitted, an invalid rule): the proxy answers the
    requests routed to it 500 itself, and it has no endpoints (feature
    `unresolved-backends`)."""
    limits: ClusterLimits | None = None
    """Connection and request limits; None: the defaults of `ClusterLimits`."""
    lb: LoadBalancing | None = None
    """The balancer's settings; None: the defaults of `LoadBalancing`."""
    outlier_detection: OutlierDetection | None = None
    """Eject endpoints by what requests see (`proxyconfig/health.py`); None: off."""
    health_check: HealthCheck | None = None
    """Probe every endpoint actively (`proxyconfig/health.py`); None: off."""
    retry_budget: RetryBudget | None = None
    """Retries the cluster takes on top of its requests (`proxyconfig/retry.py`); None: the
    defaults of `RetryBudget` (20% + 10/s over 10 s): the budget is always on."""


class PathMatch(_Base, frozen=True, kw_only=True):
    """Gateway API HTTPPathMatch."""

    type: Literal["PathPrefix", "Exact", "RegularExpression"] = "PathPrefix"
    """`RegularExpression` (feature `route-matches`) must match the whole path; only patterns
    the proxy can run in bounded time are taken (`tulle.proxyconfig.regex`, ADR 0016)."""
    value: str = "/"


HeaderName = Annotated[str, Meta(min_length=1, max_length=256,
                                 pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
HTTPMethod = Literal["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                     "PATCH"]


class HeaderMatch(_Base, frozen=True, kw_only=True):
    """Gateway API HTTPHeaderMatch.  The name matches case-insensitively; a header sent
    several times is matched as its values joined with `,` (RFC 9110 section 5.3, as Envoy)."""

    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: HeaderName
    value: Annotated[str, Meta(max_length=4096)]


class QueryParamMatch(_Base, frozen=True, kw_only=True):
    """Gateway API HTTPQueryParamMatch.  The name matches case-sensitively and exactly; names
    and values are compared percent-decoded; a parameter sent several times is matched by its
    first value (Gateway API's recommendation)."""

    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: Annotated[str, Meta(min_length=1, max_length=256)]
    value: Annotated[str, Meta(max_length=4096)]


class RouteMatch(_Base, frozen=True, kw_only=True):
    """Gateway API HTTPRouteMatch: all present conditions must hold."""

    path: PathMatch = msgspec.field(default_factory=PathMatch)
    headers: Annotated[list[HeaderMatch], Meta(max_length=16)] = msgspec.field(
        default_factory=list)
    """Every one must match (feature `route-matches`); names unique (case-insensitive)."""
    query_params: Annotated[list[QueryParamMatch], Meta(max_length=16)] = msgspec.field(
        default_factory=list)
    """Every one must match (feature `route-matches`); names unique."""
    method: HTTPMethod | None = None
    """The request method must be this one (feature `route-matches`); None: any."""


class BackendRef(_Base, frozen=True, kw_only=True):
    cluster: Name
    weight: Annotated[int, Meta(ge=0, le=1_000_000)] = 1
    filters: list[HTTPFilter] = msgspec.field(default_factory=list)
    """Filters applied only to requests sent to this backend (Gateway API
    `backendRefs[].filters`): header modifiers only.  They run after the rule's own at the same
    position of the declared order; empty: none."""


class RouteRule(_Base, frozen=True, kw_only=True):
    """Gateway API HTTPRouteRule: any match selects the rule; backends are weighted."""

    name: str = ""
    matches: list[RouteMatch] = msgspec.field(default_factory=lambda: [RouteMatch()])
    backends: list[BackendRef] = msgspec.field(default_factory=list)
    timeout_ms: Millis | None = None
    """Whole-request timeout; None takes `settings.request_timeout_ms`; 0 disables."""
    filters: list[HTTPFilter] = msgspec.field(default_factory=list)
    """HTTP filters of this rule, each tagged by `type` (`proxyconfig/filters/`).  They run in
    the proxy's declared order (`dataplane/http/chain.py`), not list order; empty: none."""
    backend_timeout_ms: Millis | None = None
    """Per try (Gateway API `timeouts.backendRequest`): from opening the upstream request to
    its response's end, 504 `UT` past it; None or 0: no per-try limit (only `timeout_ms`)."""
    retry: RetryPolicy | None = None
    """Retries of failed tries (`proxyconfig/retry.py`); None: no retries (a reused connection
    found closed is still replayed once, ADR 0017)."""
    stream_idle_timeout_ms: Millis | None = None
    """A request with no body bytes either way this long is ended: 408 while the client's
    body is awaited, 504 while the upstream's answer is, a reset once the response began
    (flag `SI`); None or 0: none (the whole-request `timeout_ms` still bounds it)."""


class VirtualHost(_Base, frozen=True, kw_only=True):
    """Rules that apply to a set of authorities (Host / :authority)."""

    name: Name
    domains: list[str] = msgspec.field(default_factory=lambda: ["*"])
    """Exact host names, `*.suffix` / `prefix.*` wildcards, or `*` for any.  A port in the request's
    authority is ignored unless the domain itself names one."""
    rules: list[RouteRule] = msgspec.field(default_factory=list)
    service: str = ""
    """`namespace/name` of the Service whose authority this host answers (a route's parent):
    `tulle stat` counts its requests under that Service whichever backends they go to.  Empty:
    none (inbound tables, gateways)."""


class RouteTable(_Base, frozen=True, kw_only=True):
    name: Name
    virtual_hosts: list[VirtualHost] = msgspec.field(default_factory=list)


class Destination(_Base, frozen=True, kw_only=True):
    """For transparent listeners: where connections to an original destination go."""

    address: str = ""
    """IP address or CIDR of the original destination; empty matches any."""
    port: PortOrZero = 0
    """Original destination port; 0 matches any."""
    protocol: Literal["auto", "http1", "http2", "tcp"] = "auto"
    route_table: str = ""
    cluster: str = ""
    refuse: bool = False
    """Connections to this destination are reset before a byte is read, counted
    (`tulle_proxy_protocol_errors_total{kind="destination_refused"}`) and logged, whatever
    `passthrough` says: a node agent's listener refuses a meshed pod's address on the ports
    the pod does not declare, which the agent's passthrough would reach from the node, past
    the pod's inbound side (ADR 0114).  Never with `route_table` or `cluster`."""


class Listener(_Base, frozen=True, kw_only=True):
    """A socket the proxy accepts connections on, and what it does with them."""

    name: Name
    address: str = "127.0.0.1"
    port: PortOrZero
    """0 picks a free port (tests)."""
    additional_addresses: Annotated[list[str], Meta(max_length=4)] = msgspec.field(
        default_factory=list)
    """More addresses served on the same port by the same listener, one socket each (Envoy's
    `additional_addresses`): a transparent sidecar's `::1` beside `127.0.0.1`, so the pod's
    IPv6 connections redirected by ip6tables are served too.  With any, an IPv6 socket takes
    only IPv6 (`IPV6_V6ONLY`).  One the namespace cannot have (its family is off) is skipped
    with a warning; ADR 0088."""
    sources: Annotated[list[str], Meta(max_length=16)] = msgspec.field(default_factory=list)
    """Addresses or CIDRs the connections must come from; any other peer is reset at accept,
    before a byte is read, and counted (`tulle_proxy_protocol_errors_total{kind=
    "source_refused"}`).  Empty: any.  A node agent's per-pod outbound listener carries the
    pod's addresses: the listener stands for the pod, whose identity it lends (ADR 0098).
    Transparent listeners and listeners with filter chains only."""
    direction: Literal["outbound", "inbound"] = "outbound"
    mode: Literal["explicit", "transparent"] = "explicit"
    """`transparent` reads the original destination of iptables-redirected connections."""
    protocol: Literal["auto", "http1", "http2", "tcp"] = "auto"
    """`auto` detects HTTP/1, the HTTP/2 preface and TLS; what is clearly not HTTP is relayed
    as TCP.  `http1` / `http2` speak only that protocol; `tcp` relays without sniffing."""
    route_table: str = ""
    """HTTP traffic is routed by this table."""
    cluster: str = ""
    """TCP traffic (and HTTP traffic when no route table is set) goes to this cluster."""
    destinations: list[Destination] = msgspec.field(default_factory=list)
    """Transparent listeners: per original destination routing; first match wins."""
    passthrough: bool = False
    """Transparent listeners: connections matching no destination go to their original
    destination unchanged (otherwise they are refused)."""
    opaque_ports: list[Port] = msgspec.field(default_factory=list)
    """Original-destination ports never sniffed (server-first protocols: MySQL, SMTP)."""
    detect_timeout_ms: Annotated[int, Meta(ge=1, le=600_000)] = 5000
    """With `auto`, a client that sends nothing this long is relayed as TCP (closed when the
    listener has no TCP target); one that sent part of a request goes to the HTTP driver."""
    tls: TLSContext | None = None
    """Terminate TLS on this listener (ALPN chooses h2 or http/1.1)."""
    reuse_port: bool = False
    max_connections: Annotated[int, Meta(ge=0, le=10_000_000)] = 0
    """Open downstream connections on this listener; one more is closed at once (RST) before
    anything is read, and counted.  0 means no limit."""
    network_filters: list[NetworkFilterConfig] = msgspec.field(default_factory=list)
    """L4 filters every opaque TCP connection of this listener passes before it is relayed, in
    the order `tulle.dataplane.network.order` declares (tagged by `type`).  Only `tcp`
    listeners (whose destinations are all `tcp`) take them: nothing on such a listener
    bypasses them."""
    filter_chains: list[FilterChain] = msgspec.field(default_factory=list)
    """Per-connection choice of protocol, TLS and routing by transport, SNI, ALPN and
    destination (`FilterChain`); the most specific match wins (ADR 0019).  A connection no
    chain matches takes the listener's own fields (its default chain) when it has a
    `route_table` or `cluster`, else passthrough (transparent, `passthrough`), else it is
    closed and counted.  Not together with `destinations`."""
    workload: str = ""
    """On a node that fronts several workloads: `namespace/name` of the workload whose traffic
    this listener carries; empty on a single-workload proxy."""


class ProxyConfig(_Base, frozen=True, kw_only=True):
    """One complete snapshot of a proxy's configuration."""

    api_version: Literal["proxy.tulle.dev/v1alpha1"] = CONFIG_API_VERSION
    version: str = "0"
    """Opaque snapshot version; the control plane's push uses it for ACK/NACK."""
    node: Node = msgspec.field(default_factory=Node)
    admin: Admin = msgspec.field(default_factory=Admin)
    settings: Settings = msgspec.field(default_factory=Settings)
    listeners: list[Listener] = msgspec.field(default_factory=list)
    route_tables: list[RouteTable] = msgspec.field(default_factory=list)
    clusters: list[Cluster] = msgspec.field(default_factory=list)
    identities: list[Identity] = msgspec.field(default_factory=list)
    """Certificates with their keys, referenced by name from `TLSContext.identity`."""
    trust_bundles: list[TrustBundle] = msgspec.field(default_factory=list)
    """CA sets, referenced by name from `TLSContext.trust_bundle`."""
    dns: DNS | None = None
    """The mesh DNS resolver (feature `dns`, ADR 0042); None: the proxy runs none."""
    telemetry: Telemetry = msgspec.field(default_factory=Telemetry)
    """What the proxy observes (`proxyconfig/telemetry.py`); empty: only its own metrics."""


class Metadata(_Base, frozen=True, kw_only=True):
    """Who a cluster or an endpoint is, for observability and (later) locality-aware balancing.

    Carried through and shown in /config_dump; the proxy does not act on it yet."""

    service: str = ""
    namespace: str = ""
    workload: str = ""
    labels: dict[str, str] = msgspec.field(default_factory=dict)


class FilterChainMatch(_Base, frozen=True, kw_only=True):
    """Which connections a filter chain takes; an empty field matches any value.

    Specificity is decided field by field in this order (Envoy's `filter_chain_match` order):
    destination port, destination address (longest prefix), server name (exact, then the
    longest `*.` suffix), transport, ALPN.  At each step the chains with a specific match are
    kept if there are any, else those that leave the field empty (ADR 0019)."""

    destination_port: PortOrZero = 0
    """Destination port (the original destination on a transparent listener); 0: any."""
    destination: list[str] = msgspec.field(default_factory=list)
    """Destination IP addresses or CIDRs; empty: any."""
    server_names: list[str] = msgspec.field(default_factory=list)
    """SNI host names from the ClientHello: exact (`api.example.com`) or `*.example.com`;
    empty: any (also no SNI)."""
    transport: Literal["any", "tls", "plaintext"] = "any"
    """`tls`: the first bytes are a TLS ClientHello; `plaintext`: anything else."""
    alpn: list[str] = msgspec.field(default_factory=list)
    """ALPN protocols the ClientHello offers; any one of them matches; empty: any."""


class FilterChain(_Base, frozen=True, kw_only=True):
    """What a listener does with the connections `match` selects: its own protocol, TLS
    termination, routing and network filters (the listener's fields of the same names, per
    connection)."""

    name: Name
    """Unique within the listener; the routing key of its connections across swaps."""
    match: FilterChainMatch = msgspec.field(default_factory=FilterChainMatch)
    protocol: Literal["auto", "http1", "http2", "tcp"] = "auto"
    """As `Listener.protocol`; with `tls`, ALPN chooses h2 or http/1.1 (`tcp` is refused)."""
    tls: TLSContext | None = None
    """Terminate TLS with these settings (the chain must match `transport: tls`).  Without
    it, a TLS connection is relayed as opaque TCP (SNI passthrough)."""
    route_table: str = ""
    cluster: str = ""
    network_filters: list[NetworkFilterConfig] = msgspec.field(default_factory=list)
    """L4 filters of this chain's relayed connections (`protocol: tcp` chains only)."""


class Identity(_Base, frozen=True, kw_only=True):
    """A certificate chain and its private key, PEM, referenced by `TLSContext.identity`.

    The key never appears in logs, error messages or /config_dump (`repr` redacts it)."""

    name: Name
    cert_chain_pem: str
    """The leaf certificate first, then intermediates (PEM)."""
    private_key_pem: str
    """The leaf's private key (PEM, unencrypted)."""

    def __repr__(self) -> str:
        return f"Identity(name={self.name!r}, cert_chain_pem=<{len(self.cert_chain_pem)} " \
               f"chars>, private_key_pem=<redacted>)"


class TrustBundle(_Base, frozen=True, kw_only=True):
    """Trust anchors (CA certificates, PEM), referenced by `TLSContext.trust_bundle`."""

    name: Name
    ca_pems: list[str] = msgspec.field(default_factory=list)


__all__ = ["CONFIG_API_VERSION", "DNS", "Admin", "BackendRef", "Cluster", "ClusterLimits", "DNSHost",
           "Destination", "Endpoint", "FilterChain", "FilterChainMatch", "HTTPMethod", "HashPolicy",
           "HeaderMatch", "HeaderName", "Identity", "Listener", "LoadBalancing", "Metadata", "Millis",
           "Name", "Node", "Overload", "PathMatch", "PathNormalization", "Port", "PortOrZero",
           "ProxyConfig", "QueryParamMatch", "RouteMatch", "RouteRule", "RouteTable", "Settings",
           "TLSContext", "TrustBundle", "VirtualHost"]
