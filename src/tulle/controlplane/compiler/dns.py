"""The mesh DNS section of each sidecar's snapshot: every Service with a virtual IP, by name.

The host list is built once per compilation from the model's Service ports (one entry per
Service, not per port) and shared by reference between snapshots, like the outbound table; a
proxy gets a `dns` section only when its workload names a resolver port (`spec.dnsPort`) or is
`interception: transparent` (a pod: 15053 by default, where `tulle iptables` sends its DNS) or
`agent` (15053 on the node agent's loopback, where `tulle iptables node apply` sends the pod's
DNS; the section names the pod's address as a client with the pod's namespace, so the node's
one resolver answers each pod's bare names in that pod's namespace: ADR 0050), so the snapshots
of every other proxy are unchanged, byte for byte.  Explicit workloads share the host's
loopback: they get none by default.  Which names a host answers
to is the proxy's rule (`dataplane/dns/table.py`, from `node.namespace`), so the table does
not grow four-fold and one table serves every namespace.  ADR 0042.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import msgspec

from tulle.controlplane.compiler.ir import MeshModel, Proxy
from tulle.proxyconfig.dns_config import DNSClient
from tulle.proxyconfig.model import DNS, DNSHost

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
"""A Service or namespace whose name is not one DNS label has no DNS name (it is left out)."""


@dataclass(frozen=True)
class DnsHosts:
    hosts: list[DNSHost] = field(default_factory=list)
    digest: bytes = b""


def dns_hosts(mesh: MeshModel) -> DnsHosts:
    vips: dict[tuple[str, str], list[str]] = {}
    for sp in mesh.services:
        if sp.vip and _LABEL.match(sp.name) and _LABEL.match(sp.namespace):
            vips.setdefault((sp.namespace, sp.name), [sp.vip, *([sp.vip6] if sp.vip6 else [])])
    hosts = [DNSHost(service=name, namespace=ns, addresses=addresses)
             for (ns, name), addresses in sorted(vips.items())]
    digest = hashlib.sha256(msgspec.json.encode(hosts)).digest()
    return DnsHosts(hosts, digest)


TRANSPARENT_DNS_PORT = 15053
"""Where a transparent workload's resolver listens when it names none: the port `tulle iptables
apply` redirects the pod's DNS to (a pod has its own loopback, so the default cannot clash)."""


def dns_section(proxy: Proxy, shared: DnsHosts) -> DNS | None:
    port = proxy.dns_port or (TRANSPARENT_DNS_PORT if proxy.intercepted else 0)
    if not port or not proxy.sidecar:
        return None
    if proxy.interception == "agent":
        return DNS(port=port, hosts=shared.hosts,
                   clients=[DNSClient(address=proxy.address, namespace=proxy.namespace)])
    if proxy.interception == "transparent":  # ip6tables sends the pod's IPv6 DNS to ::1
        return DNS(port=port, hosts=shared.hosts, additional_addresses=["::1"])
    return DNS(port=port, hosts=shared.hosts)
