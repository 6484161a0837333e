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
from msgspec import Meta, Struct

from tulle.proxyconfig.filters import HTTPFilter
from tulle.proxyconfig.health import HealthCheck, OutlierDetection
from tulle.proxyconfig.network import NetworkFilterConfig
from tulle.proxyconfig.retry import RetryBudget, RetryPolicy

Port = Annotated[int, Meta(ge=1, le=65535)]
PortOrZero = Annotated[int, Meta(ge=0, le=65535)]
Millis = Annotated[int, Meta(ge=0, le=86_400_000)]
Name = Annotated[
    str, Meta(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:|/-]*$")
]

CONFIG_API_VERSION: Final = "proxy.tulle.dev/v1alpha1"


class _Base(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


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


class Listener(_Base, frozen=True, kw_only=True):
    """A socket the proxy accepts connections on, and what it does with them."""

    name: Name
    address: str = "127.0.0.1"
    port: PortOrZero
    """0 picks a free port (tests)."""
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


Percent = Annotated[int, Meta(ge=1, le=100)]


class Overload(_Base, frozen=True, kw_only=True):
    """The overload guard (Envoy's overload manager): resource monitors and the actions taken as
    their pressure (used / limit, the highest of them, in percent) crosses a threshold.  Admin
    is exempt."""

    file_descriptors: bool = True
    """Monitor open file descriptors against the process's soft RLIMIT_NOFILE."""
    max_rss_bytes: Annotated[int, Meta(ge=0)] = 0
    """Monitor resident memory (RSS) against this limit; 0 turns the memory monitor off."""
    reject_requests_percent: Percent = 90
    """Pressure at which new HTTP requests get 503 (flag OL) and keep-alive is disabled."""
    stop_accepting_percent: Percent = 95
    """Pressure at which new downstream connections are closed at once (RST); implies the
    reject action."""
    hysteresis_percent: Annotated[int, Meta(ge=0, le=50)] = 5
    """A state is left only when the pressure falls this many points below its threshold."""
    sample_interval_ms: Annotated[int, Meta(ge=10, le=60_000)] = 1000
    """How often the monitors are sampled."""


class PathNormalization(_Base, frozen=True, kw_only=True):
    """How request paths are made canonical before routing (Istio's `pathNormalization`,
    Envoy's `normalize_path` / `merge_slashes` / `path_with_escaped_slashes_action`).

    The normalised path is what routing (and later authorization) matches and what the
    upstream receives, so the proxy and the application never disagree about which resource a
    request names.  The query string is never changed."""

    normalize: bool = True
    """RFC 3986 section 6.2.2: decode percent-encoded unreserved characters, upper-case the hex
    of the other escapes, remove `.` and `..` segments (`..` above the root stays at `/`).  A
    fragment (`#`), `%00` or a malformed escape gets 400.  false forwards paths exactly as
    received (Istio `NONE`) and the other fields are ignored."""
    merge_slashes: bool = False
    """Merge adjacent slashes (`/a//b` -> `/a/b`) after the segments are resolved (Istio
    `MERGE_SLASHES`)."""
    escaped_slashes: Literal["keep", "reject", "decode"] = "keep"
    """`%2F` and `%5C` (any case): `keep` them opaque inside their segment (upper-cased, as
    Envoy's KEEP_UNCHANGED), `reject` the request with 400, or `decode` them to `/` and `\\`
    before segments are resolved (Istio `DECODE_AND_MERGE_SLASHES` with `merge_slashes`)."""
    backslash: Literal["slash", "reject", "keep"] = "slash"
    """A `\\` in the path: read as `/` (`slash`, what Envoy's normalize_path does), answered
    with 400 (`reject`), or kept as an ordinary character (`keep`)."""


class Settings(_Base, frozen=True, kw_only=True):
    """Process-wide limits and timeouts.  Each is documented with its default in the reference."""

    max_request_header_bytes: Annotated[int, Meta(ge=1024, le=1_048_576)] = 65_536
    """Request line plus headers; larger gets 431."""
    max_response_header_bytes: Annotated[int, Meta(ge=1024, le=1_048_576)] = 65_536
    header_timeout_ms: Annotated[int, Meta(ge=1, le=600_000)] = 10_000
    """A request head not complete this long after its first byte (or after the connection
    opened) gets 408 and the connection is closed (slowloris)."""
    idle_timeout_ms: Millis = 300_000
    """Idle downstream keep-alive connections are closed after this long; 0 disables."""
    request_timeout_ms: Millis = 15_000
    """Default whole-request timeout (first request byte to last response byte); 0 disables."""
    drain_timeout_ms: Millis = 15_000
    """On SIGTERM: how long in-flight requests may take before connections are closed."""
    buffer_high_water_bytes: Annotated[int, Meta(ge=4096, le=67_108_864)] = 65_536
    """Per-direction buffering above which the sending side stops being read."""
    workers: Annotated[int, Meta(ge=1, le=256)] = 1
    """Worker processes sharing the listeners with SO_REUSEPORT."""
    generate_request_id: bool = True
    """Set `x-request-id` when a request has none."""
    tcp_idle_timeout_ms: Millis = 3_600_000
    """An opaque TCP relay with no bytes either way this long is closed on both sides (Envoy's
    tcp_proxy `idle_timeout`, same default: 1 h); 0 disables.  An HTTP/1.1 upgrade tunnel
    (after 101) is such a relay too."""
    max_connections: Annotated[int, Meta(ge=0, le=10_000_000)] = 0
    """Open downstream connections of the process (each worker), all listeners together, admin
    excluded; one more is closed at once (RST) and counted.  0 means no limit."""
    overload: Overload = msgspec.field(default_factory=Overload)
    """Resource monitors and overload actions."""
    path_normalization: PathNormalization = msgspec.field(default_factory=PathNormalization)
    """How request paths are normalised before routing; see `PathNormalization`."""
    http2_max_concurrent_streams: Annotated[int, Meta(ge=1, le=2_147_483_647)] = 100
    """Downstream SETTINGS_MAX_CONCURRENT_STREAMS; streams past it get REFUSED_STREAM.  Also
    bounds the upstream connections one client connection can have opening at once."""
    http2_max_premature_resets: Annotated[int, Meta(ge=0, le=1_000_000)] = 100
    """Streams a client may reset before their response began (rapid reset), or open past
    the concurrency limit, beyond those it got answered; more is GOAWAY(ENHANCE_YOUR_CALM).
    0: no limit."""
    http2_control_frame_burst: Annotated[int, Meta(ge=0, le=1_000_000)] = 1000
    """Per connection and class (PING, SETTINGS, PRIORITY, WINDOW_UPDATE, RST_STREAM, empty
    DATA, unknown types): frames allowed at once; more is GOAWAY(ENHANCE_YOUR_CALM).
    0: no frame budgets."""
    http2_control_frame_rate: Annotated[int, Meta(ge=1, le=1_000_000)] = 100
    """Frames per second each class's budget regains."""
    http2_max_queued_control_frames: Annotated[int, Meta(ge=0, le=1_000_000)] = 1000
    """PING/SETTINGS needing an ACK a client may send while not reading our writes.  0: no
    limit."""
    tls_handshake_timeout_ms: Millis = 10_000
    """A downstream TLS handshake not done this long after accept is aborted and counted
    (Envoy's `transport_socket_connect_timeout`, which has no default; ours is the header
    timeout's).  The connection counts against the connection caps from accept.  0: the event
    loop's own default (60 s)."""
    max_header_count: Annotated[int, Meta(ge=1, le=10_000)] = 100
    """HTTP/1 header fields in one request or response head (and in one trailer section);
    a request over it gets 431, an upstream response 502."""
    max_chunk_extension_bytes: Annotated[int, Meta(ge=16, le=1_048_576)] = 4096
    """HTTP/1 chunk extensions (`;name=value` after a chunk size); a request over it gets
    400, an upstream response 502."""
    max_trailer_bytes: Annotated[int, Meta(ge=256, le=1_048_576)] = 16_384
    """HTTP/1 trailer section of a chunked body; a request over it gets 431, an upstream
    response 502."""


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


class DNSHost(_Base, frozen=True, kw_only=True):
    """One Service's virtual addresses, answered under the names `DNS` derives from it."""

    service: Annotated[str, Meta(min_length=1, max_length=63,
                                 pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")]
    namespace: Annotated[str, Meta(min_length=1, max_length=63,
                                   pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")]
    addresses: Annotated[list[str], Meta(min_length=1, max_length=16)]
    """IPv4 addresses answer A queries, IPv6 ones AAAA; a name with only one family answers
    the other with no records (NODATA), never NXDOMAIN."""


class DNS(_Base, frozen=True, kw_only=True):
    """The proxy's DNS resolver (UDP and TCP on one port): Services' names answered with their
    virtual IPs, every other name forwarded to the upstream resolvers and relayed unchanged.

    A host `svc` in namespace `ns` answers `svc.ns.svc.<domain>`, `svc.ns.<mesh_domain>`,
    `svc.ns`, and `svc` when `ns` is the node's namespace (the pod's search path), in any
    letter case.  Names under `<mesh_domain>` that no host has are NXDOMAIN; everything
    else is forwarded."""

    address: str = "127.0.0.1"
    port: PortOrZero = 15053
    """0 picks a free port (tests)."""
    domain: Annotated[str, Meta(min_length=1, max_length=200,
                                pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")] = "cluster.local"
    """The cluster domain (Kubernetes' `cluster.local`)."""
    mesh_domain: Annotated[str, Meta(min_length=1, max_length=200,
                                     pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")] = "mesh"
    """The mesh's own pseudo-domain, answered authoritatively."""
    ttl_s: Annotated[int, Meta(ge=0, le=3600)] = 5
    """TTL of mesh answers in seconds; small, so a changed virtual IP is picked up soon."""
    hosts: list[DNSHost] = msgspec.field(default_factory=list)
    upstreams: Annotated[list[str], Meta(max_length=8)] = msgspec.field(default_factory=list)
    """Resolvers other names go to, `ip` or `ip:port` (`[v6]:port`), tried in order on
    timeout; empty: the `nameserver` lines of `resolv_conf`, read when the section is
    applied."""
    resolv_conf: str = "/etc/resolv.conf"
    """Read only when `upstreams` is empty."""
    upstream_timeout_ms: Annotated[int, Meta(ge=1, le=60_000)] = 2000
    """Per upstream tried; past the last one the client gets SERVFAIL."""
    max_inflight: Annotated[int, Meta(ge=1, le=100_000)] = 256
    """Forwarded queries awaiting an upstream; a UDP query past it is dropped (counted), a TCP
    one answered SERVFAIL."""
    max_tcp_connections: Annotated[int, Meta(ge=1, le=100_000)] = 64
    """Open client TCP connections; one more is closed at once (counted as dropped)."""
    tcp_idle_timeout_ms: Annotated[int, Meta(ge=1, le=600_000)] = 10_000
    """A client TCP connection with no complete query this long is closed."""
    max_tcp_message_bytes: Annotated[int, Meta(ge=512, le=65_535)] = 4096
    """A TCP query whose length prefix exceeds this is refused (the connection closed)."""
