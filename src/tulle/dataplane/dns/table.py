"""The mesh's names, compiled once per `dns` section: name -> ready-made answer records.

Per query the resolver does one dict lookup on the lower-cased name; the records (A and AAAA,
their owner a pointer to the question) are bytes built here, so an answer is one join.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from tulle.dataplane.protocols import dns as wire
from tulle.proxyconfig.dns import names_of
from tulle.proxyconfig.model import DNS


@dataclass(frozen=True, slots=True)
class Records:
    a: bytes
    a_count: int
    aaaa: bytes
    aaaa_count: int


@dataclass(frozen=True, slots=True)
class NameTable:
    names: dict[bytes, Records]
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
    return NameTable(names, b"." + cfg.mesh_domain.encode())
