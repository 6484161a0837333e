"""`Workload`: one instance of an application with its proxy (universal mode).

A proxy registers its workload when it starts; an operator may also apply one by hand.  The
workload's labels are `metadata.labels`, the same place a Pod keeps them, so a `Service`
selector reads the same on Kubernetes and off it.  The identity follows from namespace and
service account: `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceAccount>`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from tulle.api.errors import field_error, quote
from tulle.api.fields import (
    DNSSubdomain,
    IPAddress,
    Port,
    PortName,
    Protocol,
    QualifiedName,
    label_value_problem,
)
from tulle.api.mesh import MESH_API_VERSION
from tulle.api.meta import Model, Resource, Status
from tulle.api.registry import register
from tulle.proxyconfig.address import unmapped


class WorkloadPort(Model):
    name: PortName | None = None
    port: Port
    protocol: Protocol = "TCP"
    appProtocol: QualifiedName | None = None
    """What the port speaks (`http`, `http2`, `grpc`, `tcp`, `kubernetes.io/h2c`...)."""
    targetPort: Port | None = None
    """Universal mode: where the application listens on 127.0.0.1 when the proxy's inbound
    listener takes `port` on the workload address (default: `port`; then the application must
    listen on another address than the workload's)."""


def check_ports(ports: list[WorkloadPort]) -> None:
    """Port names unique; (port, protocol) unique.  Shared by Workload and Service ports."""
    names: set[str] = set()
    numbers: set[tuple[int, str]] = set()
    for i, p in enumerate(ports):
        if p.name is not None:
            if p.name in names:
                raise field_error(("ports", i, "name"), f"duplicate port name {quote(p.name)}")
            names.add(p.name)
        if (p.port, p.protocol) in numbers:
            raise field_error(("ports", i, "port"), f"duplicate port {p.port}/{p.protocol}")
        numbers.add((p.port, p.protocol))


def _mapped_problem(address: str) -> str:
    """Why `address` cannot be a workload's address: an IPv4-mapped form ("" when it can).
    Peers and original destinations are compared as IPv4 (a dual-stack socket's mapped peer
    included), so the IPv4 address is what names the pod."""
    v4 = unmapped(address)
    if v4 != address:
        return f"{quote(address)} is an IPv4-mapped address: give the IPv4 address ({v4})"
    return ""


def _pod_address_problem(extra: str, address: str) -> str:
    """Why `extra` cannot be a pod's second address beside `address`; "" when it can."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(extra)
        primary = ipaddress.ip_address(address)
    except ValueError:
        return f"{quote(extra)} must be an IP address without a zone"
    if ip.version == primary.version:
        return (f"{quote(extra)} is of the same family as address {quote(address)}: a pod has "
                "one address per family")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return f"{quote(extra)} is an IPv4-mapped address, not a pod's IPv6 address"
    if ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip.is_multicast:
        return (f"{quote(extra)} is a loopback, unspecified, link-local or multicast address: "
                "no other pod can call it")
    return ""


class WorkloadSpec(Model):
    address: IPAddress
    additionalAddresses: Annotated[list[IPAddress], Field(max_length=1)] = Field(
        default_factory=list)
    """A dual-stack pod's address of the other family (Kubernetes' second `podIPs` entry):
    a transparent client's call to it is the same pod-IP call as to `address` -- to that pod,
    over mTLS -- and Services still reach the pod at `address` (ADR 0088)."""
    ports: Annotated[list[WorkloadPort], Field(max_length=64)] = Field(default_factory=list)
    serviceAccount: DNSSubdomain = "default"
    zone: Annotated[str, Field(min_length=1, max_length=63)] | None = None
    """Locality for locality-aware load balancing (same form as a label value)."""
    weight: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    """Its share of its Services' traffic relative to their other endpoints (every balancer
    but the hashing ones' affinity honours it; ADR 0038).  At least 1: a workload is taken out
    of traffic by readiness or health, not by a weight of 0."""
    outboundPort: Port | None = None
    """Universal mode without interception: the loopback port of the proxy's outbound
    listener, which routes HTTP to every Service by Host (default 15001)."""
    sidecar: bool = True
    """False: no Tulle proxy runs in front of this workload (a database on a host, an
    application not yet onboarded).  Mesh clients then send it plaintext whatever the mTLS
    mode, as they cannot expect a mesh identity from it (ADR 0033); true (the default): its
    proxy terminates mTLS and clients originate it."""
    interception: Literal["explicit", "transparent", "agent"] = "explicit"
    """How the application's traffic reaches its proxy.  `explicit` (the default, loopback
    setups): the application calls the outbound listener on 127.0.0.1:`outboundPort`, which
    routes by Host, and clients reach it on its own inbound ports.  `transparent` (a Pod, a
    network namespace with `tulle iptables apply`): the proxy takes iptables-redirected
    traffic, outbound on `outboundPort` (15001) routed by original destination, inbound on
    15006 by destination port (ADR 0044).  `agent` (a pod served by its node's agent,
    steered there by `tulle iptables node apply`): as `transparent`, but both listeners are on
    the agent's loopback, outbound on `outboundPort` and inbound on `inboundPort`, one of each
    per pod, and the inbound side forwards to the pod's address (ADR 0047)."""
    dnsPort: Port | None = None
    """The loopback port of the proxy's mesh DNS resolver (15053 where `tulle iptables`
    redirects port 53 to it); absent: the proxy runs no resolver (ADR 0042)."""
    adminPort: Annotated[int, Field(ge=0, le=65535)] | None = None
    """The loopback port of its proxy's admin endpoint, as the proxy announces it
    (`tulle proxy run --admin-port`; 0: disabled); absent: the default, 15000.  So that
    `proxy-config` shows the port the proxy really serves."""
    inboundPort: Port | None = None
    """With `interception: agent`: the agent's loopback port for this pod's inbound traffic
    (default 15006; every pod of one node needs its own)."""

    @model_validator(mode="after")
    def _ports(self) -> WorkloadSpec:
        check_ports(self.ports)
        why = _mapped_problem(self.address)
        if why:
            raise field_error(("address",), why)
        for i, extra in enumerate(self.additionalAddresses):
            why = _pod_address_problem(extra, self.address)
            if why:
                raise field_error(("additionalAddresses", i), why)
        if self.inboundPort is not None and self.interception != "agent":
            raise field_error(("inboundPort",), "only with interception: agent (a sidecar "
                                                "takes inbound traffic on 15006)")
        if self.zone is not None:
            problem = label_value_problem(self.zone)
            if problem:
                raise field_error(("zone",), problem)
        return self


class WorkloadProxyStatus(Model):
    """What the control plane saw of the workload's proxy (ADR 0040); absent until a proxy
    connects.  `Disconnected` takes the workload out of every Service's endpoints."""

    state: Literal["Connected", "Disconnected"]
    reason: Annotated[str, Field(max_length=256)] = ""
    since: Annotated[str, Field(max_length=32)] = ""
    """When the state began (RFC 3339, UTC)."""
    session: Annotated[str, Field(max_length=64)] = ""
    """The stream session that wrote it: an old session never overwrites a newer one."""
    controlPlane: Annotated[str, Field(max_length=253)] = ""
    """The control-plane replica that held the stream."""


class WorkloadStatus(Status):
    proxy: WorkloadProxyStatus | None = None


@register(api_version=MESH_API_VERSION, kind="Workload", plural="workloads", short_names=("wl",))
class Workload(Resource):
    apiVersion: Literal["mesh.tulle.dev/v1alpha1"] = MESH_API_VERSION
    kind: Literal["Workload"] = "Workload"
    spec: WorkloadSpec
    status: WorkloadStatus | None = None
