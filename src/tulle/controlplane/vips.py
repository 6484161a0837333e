"""Services' virtual IPs: which one each Service should hold, given what the store says.

Why a module: the reconciler writes statuses; *what* they say is a decision of its own, with
rules that matter across replicas, kept here as a pure function of the Services seen:

- every Service holds an IPv4 VIP from `VIP_RANGE` for its lifetime;
- a dual-stack one (`spec.ipFamilyPolicy`, ADR 0088) also an IPv6 VIP from `VIP_RANGE6`,
  given back when its policy returns to `SingleStack`;
- two replicas allocating from views a moment apart can give two Services one address (each
  status write is checked against its own object only), so an address held twice stays with
  the Service created first (then by namespace/name: every replica picks the same one) and
  the other gets a new one -- its clients re-resolve within the DNS TTL, where left alone one
  Service's traffic would take the other's routes for good;
- a used-up range leaves the Service without one, logged; the reconciler goes on.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from typing import Any

from tulle.api.service import DUAL_STACK

log = logging.getLogger("tulle.controlplane")

VIP_RANGE = ipaddress.ip_network("240.240.0.0/16")
"""Service virtual IPs: reserved (class E) space, never routed, so a VIP cannot collide with a
real address; they only exist as names in route tables and mesh DNS."""
VIP_RANGE6 = ipaddress.ip_network("fd74:756c:6c65:7669::/112")
"""IPv6 virtual IPs of dual-stack Services (ADR 0088): a unique-local prefix (RFC 4193) of the
mesh's own, never routed beyond a pod (`tulle iptables apply --vip-cidr` routes it to the pod's
interface, where the sidecar's redirect takes it)."""
FIELDS = ("virtualIP", "virtualIPv6")

Obj = dict[str, Any]


def name_of(obj: Obj) -> str:
    md = obj.get("metadata") or {}
    return f"{md.get('namespace') or 'default'}/{md.get('name')}"


def _age(obj: Obj) -> tuple[str, str]:
    """Creation time, then namespace/name: the same order on every replica."""
    return (str((obj.get("metadata") or {}).get("creationTimestamp") or ""), name_of(obj))


def statuses(services: Iterable[Obj]) -> list[tuple[Obj, dict[str, Any]]]:
    """Each Service whose status must change, with the status it should have."""
    ordered = sorted(services, key=_age)  # oldest first: the first holder of an address keeps it
    owner: dict[str, str] = {}
    wanted: list[dict[str, Any]] = []
    for obj in ordered:
        status = dict(obj.get("status") or {})
        for f in FIELDS:
            vip = status.get(f)
            if vip and owner.setdefault(vip, name_of(obj)) != name_of(obj):
                log.warning("service %s: %s %s is also service %s's (two replicas allocated it "
                            "at once): a new one is allocated", name_of(obj), f, vip, owner[vip])
                status.pop(f)
        wanted.append(status)
    free = (str(ip) for ip in VIP_RANGE.hosts() if str(ip) not in owner)
    free6 = (str(ip) for ip in VIP_RANGE6.hosts() if str(ip) not in owner)
    out: list[tuple[Obj, dict[str, Any]]] = []
    for obj, status in zip(ordered, wanted, strict=True):
        dual = (obj.get("spec") or {}).get("ipFamilyPolicy") in DUAL_STACK
        if not status.get("virtualIP"):
            _assign(status, "virtualIP", next(free, None), obj)
        if dual and not status.get("virtualIPv6"):
            _assign(status, "virtualIPv6", next(free6, None), obj)
        elif not dual:
            status.pop("virtualIPv6", None)
        if status != (obj.get("status") or {}):
            out.append((obj, status))
    return out


def _assign(status: dict[str, Any], field: str, vip: str | None, obj: Obj) -> None:
    if vip is not None:
        status[field] = vip
    else:
        log.error("service %s: no %s left to allocate (%s is used up): it has none until a "
                  "Service is deleted", name_of(obj), field,
                  VIP_RANGE6 if field == "virtualIPv6" else VIP_RANGE)


__all__ = ["FIELDS", "VIP_RANGE", "VIP_RANGE6", "name_of", "statuses"]
