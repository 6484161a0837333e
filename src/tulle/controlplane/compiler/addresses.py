"""Two Workloads claiming one address and port: said in the losing Workload's status.

Why: a pod-IP destination (`transparent.py`) and a Service endpoint name an address and port;
when two Workloads claim the same one -- by `address` or by `additionalAddresses` (ADR 0088),
written alike or not -- the compiler can route it to only one of them, the first by
namespace/name, and traffic for the other silently reaches the wrong workload.  The other one
gets `AddressUnique=False` (`AddressConflict`), so `apply` warns and `get`/`describe` show it;
a Workload whose conflict is gone gets its conditions cleared.  Loopback addresses are
skipped: workloads on one host share 127.0.0.1 by design, each with its own ports.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from tulle.controlplane.compiler.inputs import Key, Resource
from tulle.controlplane.compiler.ir import Condition, ObjectRef, Proxy
from tulle.proxyconfig.address import hostport

TYPE = "AddressUnique"


def _canonical(address: str) -> str | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return None if ip.is_loopback or ip.is_unspecified else str(ip)


def address_conditions(proxies: Iterable[Proxy], workloads: Mapping[Key, Resource]
                       ) -> dict[ObjectRef, tuple[Condition, ...]]:
    """`AddressUnique=False` for each workload (after the first by namespace/name) with an
    address and inbound port another one claimed; an empty entry, clearing it, for a workload
    whose stored status still says so."""
    claims: dict[tuple[str, int], Key] = {}
    out: dict[ObjectRef, tuple[Condition, ...]] = {}
    for proxy in sorted(proxies, key=lambda p: p.key):
        taken: list[str] = []
        for address in (proxy.address, *proxy.additional_addresses):
            canon = _canonical(address)
            if canon is None:
                continue
            for ip in proxy.inbound:
                owner = claims.setdefault((canon, ip.port), proxy.key)
                if owner != proxy.key:
                    taken.append(f"{hostport(canon, ip.port)} is {owner[0]}/{owner[1]}'s")
        obj = workloads.get(proxy.key) or {}
        ref = ("Workload", proxy.key[0], proxy.key[1])
        if taken:
            generation = int((obj.get("metadata") or {}).get("generation") or 1)
            out[ref] = (Condition(
                TYPE, False, "AddressConflict",
                f"{'; '.join(taken[:3])}{'; ...' if len(taken) > 3 else ''}: pod-IP calls and "
                "Service endpoints at that address and port reach that workload, the first by "
                "namespace/name; give each workload its own address or port", generation),)
        elif any(c.get("type") == TYPE for c in
                 ((obj.get("status") or {}).get("conditions") or [])):
            out[ref] = ()
    return out


__all__ = ["TYPE", "address_conditions"]
