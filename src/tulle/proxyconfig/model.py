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


class Endpoint(_Base, frozen=True, kw_only=True):
    """One address of a cluster."""

    address: str
    """An IP address or a host name (resolved once per snapshot)."""
    port: Port
    weight: Annotated[int, Meta(ge=1, le=1_000_000)] = 1
    zone: str = ""


class Cluster(_Base, frozen=True, kw_only=True):
    """A set of interchangeable endpoints and how to talk to them."""

    name: Name
    endpoints: list[Endpoint] = msgspec.field(default_factory=list)
    protocol: Literal["http1", "http2", "tcp"] = "http1"
    """Upstream protocol.  `http2` means h2c prior knowledge, or ALPN h2 when `tls` is set."""
    lb_policy: Literal["round_robin"] = "round_robin"
    connect_timeout_ms: Annotated[int, Meta(ge=1, le=600_000)] = 1000
    max_idle_per_endpoint: Annotated[int, Meta(ge=0, le=100_000)] = 64
    """HTTP/1 keep-alive connections kept idle per endpoint; 0 disables reuse."""
    idle_timeout_ms: Millis = 60_000
    """Idle upstream connections are closed after this long; 0 keeps them until the peer closes."""
    max_concurrent_streams: Annotated[int, Meta(ge=1, le=1_000_000)] = 100
    """HTTP/2 streams per upstream connection before another connection is opened."""
    tls: TLSContext | None = None


class PathMatch(_Base, frozen=True, kw_only=True):
    """Gateway API HTTPPathMatch.  Only PathPrefix and Exact are compiled today."""

    type: Literal["PathPrefix", "Exact"] = "PathPrefix"
    value: str = "/"


class RouteMatch(_Base, frozen=True, kw_only=True):
    """Gateway API HTTPRouteMatch: all present conditions must hold."""

    path: PathMatch = msgspec.field(default_factory=PathMatch)


class BackendRef(_Base, frozen=True, kw_only=True):
    cluster: Name
    weight: Annotated[int, Meta(ge=0, le=1_000_000)] = 1


class RouteRule(_Base, frozen=True, kw_only=True):
    """Gateway API HTTPRouteRule: any match selects the rule; backends are weighted."""

    name: str = ""
    matches: list[RouteMatch] = msgspec.field(default_factory=lambda: [RouteMatch()])
    backends: list[BackendRef] = msgspec.field(default_factory=list)
    timeout_ms: Millis | None = None
    """Whole-request timeout; None takes `settings.request_timeout_ms`; 0 disables."""


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
    """`auto` detects HTTP/1, the HTTP/2 preface and TLS; anything else is relayed as TCP."""
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
    """With `auto`, a client that sends nothing this long is relayed as TCP."""
    tls: TLSContext | None = None
    """Terminate TLS on this listener (ALPN chooses h2 or http/1.1)."""
    reuse_port: bool = False


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
