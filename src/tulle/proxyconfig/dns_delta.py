"""`delta-dns-hosts`: a `dns` section whose only change is its host list, sent as the hosts
added, changed and removed (ADR 0042), not the whole list.

At 1,000 Services the list is ~65 KB and a new Service adds one entry; every proxy that runs a
resolver gets it.  Hosts are keyed `namespace/service`.  The order of the new list is kept
exactly (`apply_delta(a, diff(a, b)) == b`): additions go after the survivors, and when that is
not the new order the whole key order is sent.  A proxy that lacks the unit gets the section
whole (`Delta.dns`).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from tulle.proxyconfig.model import DNSHost

DNS_HOSTS: Final = "delta-dns-hosts"


class DnsHostsDelta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    upsert: list[dict[str, Any]] = msgspec.field(default_factory=list)
    """Hosts (plain values) that are new or whose addresses changed."""
    remove: list[str] = msgspec.field(default_factory=list)
    """`namespace/service` of the hosts that are gone."""
    order: list[str] = msgspec.field(default_factory=list)
    """Every key in the new order, only when survivors-then-additions is not it."""


class DnsHostsError(ValueError):
    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


def key(h: DNSHost) -> str:
    return f"{h.namespace}/{h.service}"


def diff_hosts(old: list[DNSHost], new: list[DNSHost]) -> DnsHostsDelta:
    old_by = {key(h): h for h in old}
    new_keys = [key(h) for h in new]
    wanted = set(new_keys)
    upsert = [msgspec.to_builtins(h) for h in new
              if old_by.get(key(h)) is not h and old_by.get(key(h)) != h]
    remove = [k for k in old_by if k not in wanted]
    survivors = [k for k in old_by if k in wanted]
    added = [k for k in new_keys if k not in old_by]
    order = [] if survivors + added == new_keys else new_keys
    return DnsHostsDelta(upsert=upsert, remove=remove, order=order)


def apply_hosts(old: list[DNSHost], d: DnsHostsDelta, path: str = "delta.dns_hosts"
                ) -> list[DNSHost]:
    """`old` with `d` applied; a delta `diff_hosts` never writes is refused with its path."""
    items = {key(h): h for h in old}
    order = list(items)
    for i, k in enumerate(d.remove):
        if k not in items:
            raise DnsHostsError(f"cannot remove unknown DNS host {k!r}", f"{path}.remove[{i}]")
        del items[k]
        order.remove(k)
    seen: set[str] = set()
    for i, raw in enumerate(d.upsert):
        h = msgspec.convert(raw, DNSHost)
        k = key(h)
        if k in seen:
            raise DnsHostsError(f"DNS host {k!r} upserted twice", f"{path}.upsert[{i}]")
        seen.add(k)
        if k not in items:
            order.append(k)
        items[k] = h
    if d.order:
        if sorted(d.order) != sorted(items):
            raise DnsHostsError("order does not list the same hosts", f"{path}.order")
        order = list(d.order)
    return [items[k] for k in order]
