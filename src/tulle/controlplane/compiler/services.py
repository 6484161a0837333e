"""Services -> the model's Service ports, derived once per compilation for all proxies.

A Service port becomes one cluster, named like Istio's `outbound|<port>||<name>.<namespace>`,
whose endpoints are the selected workloads' addresses at the workload port the Service's
`targetPort` names (by number or by port name, Kubernetes semantics).  Its default virtual
host answers to the names a client may use: `name`, `name.ns`, `name.ns.svc`,
`name.ns.svc.cluster.local` and the virtual IP, each with and without `:port`.  Each endpoint
carries the metadata of the workload behind it (service, namespace, workload, labels, zone).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from tulle.api.service import DUAL_STACK
from tulle.controlplane.compiler.inputs import Key, MeshInputs, Resource, spec_of
from tulle.controlplane.compiler.ir import Endpoint, Metadata, Proxy, ServicePort, cluster_name
from tulle.controlplane.compiler.protocols import port_protocol


def workload_port(workload: Resource, target: Any) -> int | None:
    """The workload port a Service targetPort refers to (a number, or a port name)."""
    ports = spec_of(workload).get("ports") or []
    if isinstance(target, int):
        return target if any(p.get("port") == target for p in ports) or not ports else None
    for p in ports:
        if p.get("name") == target:
            return int(p["port"])
    return None


def _labels(obj: Resource) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(((obj.get("metadata") or {}).get("labels") or {}).items()))


def service_ports(m: MeshInputs, key: Key, svc: Resource,
                  proxies: Mapping[Key, Proxy] | None = None) -> list[ServicePort]:
    """The ports of one Service.  `proxies` (the model's, by key) lends each endpoint the
    labels and zone its workload's proxy already carries."""
    ns, name = key
    spec = spec_of(svc)
    selector = spec.get("selector") or {}
    vip = ((svc.get("status") or {}).get("virtualIP") or "")
    vip6 = ""
    if spec.get("ipFamilyPolicy") in DUAL_STACK:
        vip6 = ((svc.get("status") or {}).get("virtualIPv6") or "")
    generation = int((svc.get("metadata") or {}).get("generation") or 1)
    selected = m.members(ns, selector)
    out: list[ServicePort] = []
    for p in spec.get("ports") or []:
        port = int(p["port"])
        target = p.get("targetPort", port)
        endpoints: list[Endpoint] = []
        standby: list[Endpoint] = []  # out by readiness: members, not endpoints (ADR 0116)
        for wkey, w in selected:
            wp = workload_port(w, target)
            wspec = spec_of(w)
            addr = wspec.get("address")
            if wp is None or not addr:
                continue
            proxy = proxies.get(wkey) if proxies is not None else None
            if proxy is not None:
                labels, zone = proxy.metadata.labels, proxy.metadata.zone
            else:
                labels, zone = _labels(w), wspec.get("zone") or ""
            (standby if wkey in m.out else endpoints).append(Endpoint(addr, wp, Metadata(
                service=name, namespace=ns, workload=wkey[1], labels=labels, zone=zone),
                weight=int(wspec.get("weight") or 1)))
        names = [name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"]
        if vip:
            names.append(vip)
        if vip6:
            names.append(f"[{vip6}]")
        domains = [f"{n}:{port}" for n in names]
        if port == 80:
            domains = names + domains
        out.append(ServicePort(ns, name, port, port_protocol(p, "http1"), tuple(endpoints),
                               tuple(domains), port_name=p.get("name") or "",
                               generation=generation, vip=vip, vip6=vip6,
                               declared=port_protocol(p, ""), standby=tuple(standby)))
    return out


ServiceMemo = dict[Key, tuple[bytes, tuple[Proxy, ...], list[ServicePort]]]
"""Each Service's content (JSON, followed by which of its members are out by readiness), the
proxies it selected (in or out) and its ports, from the previous derivation."""


def derive_services(m: MeshInputs, proxies: Mapping[Key, Proxy] | None = None,
                    memo: ServiceMemo | None = None) -> tuple[ServicePort, ...]:
    """Every Service port of the mesh, sorted by (namespace, name, port).

    With a `memo` (and `proxies` whose objects are kept across derivations while their
    workload is unchanged), a Service whose content and selected proxies are the same as last
    time keeps its very `ServicePort` objects: its ports depend on nothing else.
    """
    out: list[ServicePort] = []
    fresh: ServiceMemo = {}
    for k, s in sorted(m.services.items()):
        if memo is not None and proxies is not None:
            fingerprint = msgspec.json.encode(s)
            members = m.members(k[0], spec_of(s).get("selector") or {})
            selected = tuple(proxies[wk] for wk, _ in members)
            out_of = tuple(wk in m.out for wk, _ in members)
            hit = memo.get(k)
            if (hit is not None and hit[0] == fingerprint + bytes(out_of)
                    and len(hit[1]) == len(selected)
                    and all(a is b for a, b in zip(hit[1], selected, strict=True))):
                ports = hit[2]
            else:
                ports = _sorted_ports(service_ports(m, k, s, proxies))
            fresh[k] = (fingerprint + bytes(out_of), selected, ports)
        else:
            ports = _sorted_ports(service_ports(m, k, s, proxies))
        out.extend(ports)
    if memo is not None:
        memo.clear()
        memo.update(fresh)
    return tuple(out)


def _sorted_ports(ports: list[ServicePort]) -> list[ServicePort]:
    by_port = {sp.port: sp for sp in ports}  # a port listed twice: the last one
    return [by_port[p] for p in sorted(by_port)]


__all__ = ["ServiceMemo", "ServicePort", "cluster_name", "derive_services", "service_ports",
           "workload_port"]
