"""The `dns` section of the proxy configuration: the mesh DNS resolver (feature `dns`,
ADR 0042).

Kept apart from `model.py` because the resolver's shape stands on its own; `model.ProxyConfig`
holds it and `model` re-exports its names.  What its types cannot say is checked in `dns.py`.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from tulle.proxyconfig.values import Base as _Base
from tulle.proxyconfig.values import PortOrZero


class DNSHost(_Base, frozen=True, kw_only=True):
    """One Service's virtual addresses, answered under the names `DNS` derives from it."""

    service: Annotated[str, Meta(min_length=1, max_length=63,
                                 pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")]
    namespace: Annotated[str, Meta(min_length=1, max_length=63,
                                   pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")]
    addresses: Annotated[list[str], Meta(min_length=1, max_length=16)]
    """IPv4 addresses answer A queries, IPv6 ones AAAA; a name with only one family answers
    the other with no records (NODATA), never NXDOMAIN."""


class DNSClient(_Base, frozen=True, kw_only=True):
    """A source address whose bare names resolve in a namespace of its own (a pod behind a
    node agent: the agent's one resolver answers every pod of the node, ADR 0050)."""

    address: Annotated[str, Meta(min_length=1, max_length=45)]
    """The pod's address, as the query's source (DNAT keeps it)."""
    namespace: Annotated[str, Meta(min_length=1, max_length=63,
                                   pattern=r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")]
    """Whose Services answer to a bare `svc` for queries from `address`."""


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
    additional_addresses: Annotated[list[str], Meta(max_length=4)] = msgspec.field(
        default_factory=list)
    """More addresses answered on the same port (UDP and TCP each): a sidecar's `::1`, where
    ip6tables sends the pod's IPv6 DNS.  Skipped with a warning when the namespace cannot
    have one (ADR 0088)."""
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
    clients: Annotated[list[DNSClient], Meta(max_length=4096)] = msgspec.field(
        default_factory=list)
    """Per source address, the namespace of bare names (feature `dns-clients`); a query from
    any other address takes `node.namespace`.  Empty: every query takes `node.namespace`."""
