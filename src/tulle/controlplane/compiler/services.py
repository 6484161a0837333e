"""Services -> clusters and default virtual hosts, computed once per compilation for all proxies.

A Service port becomes one cluster, named like Istio's `outbound|<port>||<name>.<namespace>`,
whose endpoints are the selected workloads' addresses at the workload port the Service's
`targetPort` names (by number or by port name, Kubernetes semantics).  Its default virtual
host answers to the names a client may use: `name`, `name.ns`, `name.ns.svc`,
`name.ns.svc.cluster.local` and the virtual IP, each with and without `:port`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tulle.controlplane.compiler.inputs import Key, MeshInputs, Resource, spec_of
from tulle.controlplane.compiler.protocols import port_protocol


def cluster_name(ns: str, name: str, port: int) -> str:
    return f"outbound|{port}||{name}.{ns}"


def workload_port(workload: Resource, target: Any) -> int | None:
    """The workload port a Service targetPort refers to (a number, or a port name)."""
    ports = spec_of(workload).get("ports") or []
    if isinstance(target, int):
        return target if any(p.get("port") == target for p in ports) or not ports else None
    for p in ports:
        if p.get("name") == target:
            return int(p["port"])
    return None


@dataclass(frozen=True)
class ServicePort:
    namespace: str
    name: str
    port: int
    protocol: str
    """Upstream protocol for the cluster: http1, http2 or tcp."""
    cluster: dict[str, Any]
    domains: tuple[str, ...]

    @property
    def cluster_name(self) -> str:
        return str(self.cluster["name"])


def service_ports(m: MeshInputs, key: Key, svc: Resource) -> list[ServicePort]:
    ns, name = key
    spec = spec_of(svc)
    selector = spec.get("selector") or {}
    vip = ((svc.get("status") or {}).get("virtualIP") or "")
    selected = m.select(ns, selector)
    out: list[ServicePort] = []
    for p in spec.get("ports") or []:
        port = int(p["port"])
        target = p.get("targetPort", port)
        proto = port_protocol(p, "http1")
        endpoints = []
        for _, w in selected:
            wp = workload_port(w, target)
            addr = spec_of(w).get("address")
            if wp is None or not addr:
                continue
            ep: dict[str, Any] = {"address": addr, "port": wp}
            zone = spec_of(w).get("zone")
            if zone:
                ep["zone"] = zone
            endpoints.append(ep)
        names = [name, f"{name}.{ns}", f"{name}.{ns}.svc", f"{name}.{ns}.svc.cluster.local"]
        if vip:
            names.append(vip)
        domains = [f"{n}:{port}" for n in names]
        if port == 80:
            domains = names + domains
        out.append(ServicePort(ns, name, port, proto, {
            "name": cluster_name(ns, name, port),
            "protocol": "http1" if proto == "tcp" else proto,
            "endpoints": endpoints,
        }, tuple(domains)))
    return out
