"""What of the cached snapshot a restarted proxy may serve with the identities it has (ADR 0123).

Why its own module: the agent reads the cache at start, but which certificate a workload of
the snapshot must carry, and what a node agent serves of a snapshot when some of its pods'
identities are not usable, are questions about the snapshot's shape (`push/node.py` merges
a node's workloads into one; the proxy takes it apart here), not about the stream.

- `expected_principals`: the SPIFFE IDs the snapshot itself gives a workload (the control
  plane's word, cached with it): its telemetry's own principal for the proxy's own workload,
  and the mesh's `peers` table for any.  A cached certificate for another ID is not served.
- `without_workloads`: a node's merged snapshot without the parts of some of its workloads --
  their listeners (tagged `Listener.workload`), the clusters only they use (tagged
  `Cluster.workload`, or presenting their certificate), and the route tables only their
  listeners name.  A single-workload snapshot has no such tags: it is served whole or not at
  all.
- `named_workloads`: the workloads a snapshot names, so that a proxy restarted without some
  of them serves the rest of its cache and removes their kept identities (ADR 0126).  It is
  not a list of the node's pods: a pod whose part is empty (no ports, a mesh without
  Services) has nothing tagged, so its absence never says a pod left.
"""

from __future__ import annotations

from collections.abc import Collection

import msgspec

from tulle.proxyconfig.model import Listener, ProxyConfig, TLSContext
from tulle.proxyconfig.reserved import identity_workload


def expected_principals(cfg: ProxyConfig | None, namespace: str, name: str, *,
                        first: bool) -> set[str]:
    """The SPIFFE IDs `cfg` gives workload `namespace/name` (empty: it gives none).  `first`:
    the proxy's own workload, whose principal the telemetry names."""
    if cfg is None:
        return set()
    tel = cfg.telemetry
    out: set[str] = set()
    if first:
        out.add(tel.principal)
        if tel.metrics is not None:
            out.add(tel.metrics.principal)
    if tel.metrics is not None:
        for p in tel.metrics.peers:
            ns = p.namespace or _spiffe_namespace(p.principal)
            if p.workload == name and ns == namespace:
                out.add(p.principal)
    out.discard("")
    return out


def _spiffe_namespace(principal: str) -> str:
    parts = principal.split("/")  # spiffe://<td>/ns/<namespace>/sa/<sa>
    return parts[4] if len(parts) > 4 and parts[3] == "ns" else ""


def is_node_snapshot(cfg: ProxyConfig) -> bool:
    """A node's merged snapshot: its listeners say whose they are."""
    return any(lc.workload for lc in cfg.listeners)


def _tables(listeners: Collection[Listener]) -> set[str]:
    out = {lc.route_table for lc in listeners}
    for lc in listeners:
        out.update(d.route_table for d in lc.destinations)
        out.update(fc.route_table for fc in lc.filter_chains)
    out.discard("")
    return out


def without_workloads(cfg: ProxyConfig, workloads: Collection[str],
                      identities: Collection[str]) -> ProxyConfig:
    """`cfg` (a node's snapshot) without what only `workloads` (`namespace/name`) use;
    `identities`: their identity section names, which their clusters present."""
    gone = [lc for lc in cfg.listeners if lc.workload in workloads]
    kept = [lc for lc in cfg.listeners if lc.workload not in workloads]
    tables = _tables(gone) - _tables(kept)

    def theirs(workload: str, tls_identity: str) -> bool:
        return workload in workloads or tls_identity in identities

    clusters = [c for c in cfg.clusters
                if not theirs(c.workload, c.tls.identity if c.tls is not None else "")]
    return msgspec.structs.replace(
        cfg, listeners=kept, clusters=clusters,
        route_tables=[t for t in cfg.route_tables if t.name not in tables])


def named_workloads(cfg: ProxyConfig, own: str) -> set[str]:
    """The workloads (`namespace/name`) `cfg` names: `own` (the snapshot is its own
    workload's), and on a node's merged snapshot every workload a listener or cluster is
    tagged with, or whose certificate a TLS setting presents (`workload:<ns>/<name>`)."""
    out = {own}
    tls: list[TLSContext | None] = []
    for lc in cfg.listeners:
        out.add(lc.workload)
        tls.append(lc.tls)
        tls.extend(fc.tls for fc in lc.filter_chains)
    for c in cfg.clusters:
        out.add(c.workload)
        tls.append(c.tls)
    out.update(identity_workload(t.identity) for t in tls if t is not None)
    out.discard("")
    return out


__all__ = ["expected_principals", "is_node_snapshot", "named_workloads", "without_workloads"]
