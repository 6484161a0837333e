"""The mesh's names, compiled once per `dns` section: name -> ready-made answer records.

Per query the resolver does one dict lookup on the lower-cased name; the records (A and AAAA,
their owner a pointer to the question) are bytes built here, so an answer is one join.

The dict also holds, with no records (`EMPTY`: every type is NODATA), the names that exist
only because names below them do — the empty non-terminals (RFC 4592 2.2.2) of the zones the
resolver speaks for: the mesh domain's apex and every parent of a mesh name down to it
(`shop.mesh`, `mesh`), and the parents of a Service's cluster-domain name down to
`svc.<domain>` (`shop.svc.cluster.local`, `svc.cluster.local`).  NXDOMAIN for one of them
would say nothing exists below it (RFC 8020), and a resolver that believes that denies the
Service names themselves.  They are found when the table is built, so a query still costs
one lookup.  Not among them: `<domain>` itself and above (the cluster's own DNS holds that
apex, its SOA and NS), and the parents of the search-path forms `svc.ns` and `svc` (`shop`,
the root: names of the public DNS, `.shop` a delegated TLD), which are forwarded as before.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

from tulle.dataplane.protocols import dns as wire
from tulle.proxyconfig.dns import empty_names, names_of
from tulle.proxyconfig.model import DNS


@dataclass(frozen=True, slots=True)
class Records:
    a: bytes
    a_count: int
    aaaa: bytes
    aaaa_count: int


EMPTY: Final = Records(b"", 0, b"", 0)
"""The records of an empty non-terminal: a name that exists, with no records of any type."""


@dataclass(frozen=True, slots=True)
class NameTable:
    names: dict[bytes, Records]
    """Every name answered here: a Service's forms, and the empty non-terminals (`EMPTY`)."""
    mesh_suffix: bytes
    """`.mesh` (with the dot): names under it that are not in `names` are NXDOMAIN."""

    def lookup(self, name: bytes) -> Records | None:
        return self.names.get(name)

    def owns(self, name: bytes) -> bool:
        """A name this resolver is the authority for (the mesh domain)."""
        return name.endswith(self.mesh_suffix) or name == self.mesh_suffix[1:]


def build(cfg: DNS, local_namespace: str) -> NameTable:
    names: dict[bytes, Records] = {}
    ttl = cfg.ttl_s
    for h in cfg.hosts:
        a = [wire.rr(wire.A, ttl, ipaddress.ip_address(x).packed) for x in h.addresses
             if ipaddress.ip_address(x).version == 4]
        aaaa = [wire.rr(wire.AAAA, ttl, ipaddress.ip_address(x).packed) for x in h.addresses
                if ipaddress.ip_address(x).version == 6]
        rec = Records(b"".join(a), len(a), b"".join(aaaa), len(aaaa))
        for n in names_of(h.service, h.namespace, cfg.domain, cfg.mesh_domain, local_namespace):
            # A bare `svc` (local namespace) never shadows a `svc.ns` name: `svc.ns` is a
            # two-label name and a service name is one label, so keys cannot collide except
            # `<svc>.<ns>` against a Service named like a namespace; the full form wins.
            names.setdefault(n.encode(), rec)
    for ent in empty_names(list(names), cfg.domain, cfg.mesh_domain):
        names.setdefault(ent, EMPTY)
    return NameTable(names, b"." + cfg.mesh_domain.encode())
