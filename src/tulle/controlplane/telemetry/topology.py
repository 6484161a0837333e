"""The dashboard's service graph: nodes, edges and their golden signals (ADR 0056).

Built from the same window as `tulle stat` (ADR 0046, `stat.aggregate`), so the graph and the
table never disagree: a **Service** node carries what its clients got, a **Workload** node
what its sidecar served, a **traffic** edge (client workload -> Service) one client's view of
one Service, and a **serves** edge (Service -> Workload) says which workloads' sidecars report
serving it.  mTLS on an edge is read from the snapshot the control plane compiled for the
proxy at its origin: a traffic edge is mTLS when the client's cluster for that Service
originates mesh TLS; a serves edge is `strict` when every inbound filter chain of the server
terminates TLS, `permissive` when some do, `off` when none does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from tulle.controlplane.telemetry.stat import STAT_API_VERSION, aggregate, members_from
from tulle.controlplane.telemetry.window import StatsWindow
from tulle.proxyconfig.model import ProxyConfig

Snapshots = Callable[[tuple[str, str]], ProxyConfig | None]
"""The snapshot compiled for a workload (namespace, name), if any."""


def _split(key: str) -> tuple[str, str]:
    ns, _, name = key.partition("/")
    return ns, name


def client_mtls(cfg: ProxyConfig | None, service: str) -> bool | None:
    """Whether `cfg`'s clusters for Service `namespace/name` originate TLS; None: unknown."""
    if cfg is None:
        return None
    ns, name = _split(service)
    found = [c for c in cfg.clusters if c.metadata is not None and c.metadata.service == name
             and (c.metadata.namespace or cfg.node.namespace) == ns]
    if not found:
        return None
    return all(c.tls is not None for c in found)


def server_mtls(cfg: ProxyConfig | None) -> Literal["strict", "permissive", "off"] | None:
    """How `cfg`'s inbound listeners take connections; None: unknown."""
    if cfg is None:
        return None
    chains: list[bool] = []
    for lst in cfg.listeners:
        if lst.direction != "inbound":
            continue
        if lst.filter_chains:
            chains += [fc.tls is not None for fc in lst.filter_chains]
        else:
            chains.append(lst.tls is not None)
    if not chains:
        return None
    if all(chains):
        return "strict"
    return "permissive" if any(chains) else "off"


def topology_document(win: StatsWindow, window: float, snapshots: Snapshots, *,
                      namespace: str | None = None, window_text: str = "") -> dict[str, Any]:
    """The JSON document of `GET /api/v1/topology` (docs/reference/dashboard.md)."""
    rows, edges = aggregate(win, window, members_from(snapshots))

    def shown(key: str) -> bool:
        return namespace is None or _split(key)[0] == namespace

    nodes = []
    for (kind, key), s in sorted(rows.items()):
        if not shown(key):
            continue
        ns, name = _split(key)
        prefix = "svc" if kind == "Service" else "wl"
        nodes.append({"id": f"{prefix}:{key}", "kind": kind, "namespace": ns, "name": name,
                      "meshed": len(s.meshed), **s.to_dict()})
    out_edges = []
    for (client, service), s in sorted(edges.items()):
        if not (shown(client) or shown(service)):
            continue
        out_edges.append({"id": f"{client}->{service}", "kind": "traffic",
                          "source": f"wl:{client}", "target": f"svc:{service}",
                          "mtls": client_mtls(snapshots(_split(client)), service),
                          **s.to_dict()})
    for (kind, key), s in sorted(rows.items()):
        if kind != "Service" or not shown(key):
            continue
        for workload in sorted(s.meshed):
            out_edges.append({"id": f"{key}=>{workload}", "kind": "serves",
                              "source": f"svc:{key}", "target": f"wl:{workload}",
                              "mtls": server_mtls(snapshots(_split(workload)))})
    ids = {n["id"] for n in nodes}
    for e in out_edges:  # an edge across namespaces: its far end is a node too
        for end in (e["source"], e["target"]):
            if end not in ids:
                ids.add(end)
                kind_, _, key = end.partition(":")
                ns, name = _split(key)
                nodes.append({"id": end, "kind": "Service" if kind_ == "svc" else "Workload",
                              "namespace": ns, "name": name, "meshed": 0, "outside": True})
    return {"apiVersion": STAT_API_VERSION, "kind": "Topology",
            "window": window_text or f"{window:g}s", "windowSeconds": window,
            "nodes": nodes, "edges": out_edges}


__all__ = ["client_mtls", "server_mtls", "topology_document"]
