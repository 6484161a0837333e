"""One proxy's snapshot: its workload's inbound side plus the services it may call.

Universal mode without interception: each workload port gets an inbound listener on the
workload's address that forwards to the application on 127.0.0.1 at the port's `targetPort`.
The listener speaks the port's protocol (`protocols.port_protocol`: `appProtocol`, then the
port name, else `auto`): an HTTP port's listener speaks only HTTP, so nothing reaches the
application without going through the HTTP stack; a `tcp` port is relayed unsniffed; only a
port nobody described is sniffed.  One outbound listener (default 127.0.0.1:15001,
`spec.outboundPort` to change) routes HTTP by Host to every Service of the mesh.  A
`transparent` workload's proxy (iptables) has these per-port listeners turned into the filter
chains of one listener on 15006, and the mesh's transparent outbound listener in place of the
explicit one (`transparent.py`, ADR 0044).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from tulle.controlplane.compiler.inputs import Key, MeshInputs, Resource, key_of, spec_of
from tulle.controlplane.compiler.ir import InboundPort, Metadata, Proxy
from tulle.controlplane.compiler.outbound import MESH_BUNDLE, MESH_IDENTITY
from tulle.controlplane.compiler.protocols import port_protocol

DEFAULT_OUTBOUND_PORT = 15001


def derive_proxy(workload: Resource) -> Proxy:
    ns, name = key_of(workload)
    spec = spec_of(workload)
    labels = (workload.get("metadata") or {}).get("labels") or {}
    inbound = tuple(InboundPort(int(p["port"]), int(p.get("targetPort") or p["port"]),
                                port_protocol(p, "auto"))
                    for p in sorted(spec.get("ports") or [], key=lambda p: int(p["port"])))
    return Proxy(key=(ns, name), service=labels.get("app", ""),
                 address=spec.get("address") or "127.0.0.1", inbound=inbound,
                 outbound_port=int(spec.get("outboundPort") or DEFAULT_OUTBOUND_PORT),
                 metadata=Metadata(service=labels.get("app", ""), namespace=ns, workload=name,
                                   labels=tuple(sorted(labels.items())),
                                   zone=spec.get("zone") or ""),
                 service_account=spec.get("serviceAccount") or "default",
                 sidecar=spec.get("sidecar") is not False,
                 interception=_INTERCEPTION.get(spec.get("interception") or "", "explicit"),
                 dns_port=int(spec.get("dnsPort") or 0),
                 admin_port=None if spec.get("adminPort") is None else int(spec["adminPort"]),
                 inbound_port=int(spec.get("inboundPort") or 15006),
                 additional_addresses=tuple(spec.get("additionalAddresses") or ()))


_INTERCEPTION: dict[str, Literal["transparent", "agent"]] = {
    "transparent": "transparent", "agent": "agent"}
"""`Workload.spec.interception` values other than the default `explicit` (ADR 0044, 0047)."""


ProxyMemo = dict[Key, tuple[bytes, Proxy]]
"""Each workload's content (JSON) and its proxy model, from the previous compilation."""


def derive_proxies(m: MeshInputs, memo: ProxyMemo | None = None) -> tuple[Proxy, ...]:
    """One proxy per workload, sorted by (namespace, name).  With a `memo`, a workload whose
    content did not change keeps the very same `Proxy` object (and the memo is updated)."""
    if memo is None:
        return tuple(derive_proxy(m.workloads[k]) for k in sorted(m.workloads))
    out: list[Proxy] = []
    fresh: ProxyMemo = {}
    for k in sorted(m.workloads):
        w = m.workloads[k]
        fingerprint = msgspec.json.encode(w)
        hit = memo.get(k)
        proxy = hit[1] if hit is not None and hit[0] == fingerprint else derive_proxy(w)
        fresh[k] = (fingerprint, proxy)
        out.append(proxy)
    memo.clear()
    memo.update(fresh)
    return tuple(out)


def inbound(proxy: Proxy) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The inbound listeners and clusters.  A port with authorization policies (`proxy.authz`)
    is guarded on every path into the application: an HTTP port routes through its own route
    table (`inbound_tables`: one catch-all rule whose `Authorization` filter runs first), a
    `tcp` port relays through an `authz` network filter, and an `auto` port takes only HTTP
    (no `cluster` for opaque TCP, which could not be authorized per request: declare such a
    port `tcp`).  Server-side filters (rate limits, faults: `proxy.inbound_rules`,
    `proxy.inbound_network`, ADR 0041) route an HTTP port through its table too (an `auto`
    port without authorization keeps relaying opaque TCP), and add network filters to a
    `tcp` port after its authorization."""
    listeners: list[dict[str, Any]] = []
    clusters: list[dict[str, Any]] = []
    guarded = {a.port: a for a in proxy.authz}
    filtered = {r.port for r in proxy.inbound_rules}
    nets = {n.port: n for n in proxy.inbound_network}
    modes = dict(proxy.mtls)
    for p in proxy.inbound:
        name = f"inbound|{p.port}"
        listener: dict[str, Any] = {"name": name, "address": proxy.address, "port": p.port,
                                    "direction": "inbound", "protocol": p.protocol,
                                    "cluster": name}
        authz = guarded.get(p.port)
        if p.protocol == "tcp":
            network = ([{"type": "authz", "policies": [msgspec.to_builtins(x)
                                                       for x in authz.policies]}]
                       if authz is not None else [])
            net = nets.get(p.port)
            if net is not None:
                network += [msgspec.to_builtins(f) for f in net.filters]
            if network:
                listener["network_filters"] = network
        elif authz is not None:
            del listener["cluster"]
            listener["route_table"] = name
        elif p.port in filtered:
            if p.protocol != "auto":
                del listener["cluster"]
            listener["route_table"] = name
        mode = modes.get(p.port, "DISABLED")
        if mode != "DISABLED":
            listener = mtls_chains(listener, mode == "PERMISSIVE")
        listeners.append(listener)
        clusters.append({"name": name, "protocol": "http1" if p.protocol == "auto" else p.protocol,
                         "endpoints": [{"address": "127.0.0.1", "port": p.target_port}]})
    return listeners, clusters


INBOUND_MTLS = {"identity": MESH_IDENTITY, "trust_bundle": MESH_BUNDLE, "min_version": "1.3"}
"""An inbound port's mTLS (ADR 0033): the proxy's SVID, client certificates verified against
the mesh roots (which makes the client's SPIFFE ID the connection's peer identity), TLS 1.3.
ALPN is the listener's default (`h2`, `http/1.1`, `tulle-tcp`): it picks the HTTP driver or
the TCP relay."""


def mtls_chains(listener: dict[str, Any], permissive: bool) -> dict[str, Any]:
    """`listener` with its routing moved into filter chains (ADR 0030): one terminating mTLS;
    with `permissive`, one more for plaintext.  The listener keeps no routing of its own, so a
    connection no chain takes (plaintext on a STRICT port) is closed and counted."""
    route: dict[str, Any] = {k: listener.pop(k) for k in ("route_table", "cluster", "network_filters")
             if k in listener}
    chains = [{"name": "mtls", "match": {"transport": "tls"}, "protocol": listener["protocol"],
               "tls": INBOUND_MTLS, **route}]
    if permissive:
        chains.append({"name": "plaintext", "match": {"transport": "plaintext"},
                       "protocol": listener["protocol"], **route})
    # The chains carry the protocol; the listener's own is only that of a default chain,
    # which it no longer has.
    return {**listener, "protocol": "auto", "filter_chains": chains}


def inbound_tables(proxy: Proxy) -> list[dict[str, Any]]:
    """The route table of each HTTP inbound port with authorization policies or server-side
    filters: a rule per route-rule scope (its matches; most specific filters), then the
    catch-all, everything to the port's cluster.  Every rule runs the port's `Authorization`
    filter, and a rule scope also runs the port scope's filters of the types it lacks (a
    limit on one rule does not lift the port's faults)."""
    protocols = {p.port: p.protocol for p in proxy.inbound}
    authz = {a.port: a for a in proxy.authz}
    rules_of: dict[int, list[Any]] = {}
    for r in proxy.inbound_rules:
        rules_of.setdefault(r.port, []).append(r)
    tables: list[dict[str, Any]] = []
    for port in sorted(set(authz) | set(rules_of)):
        if protocols.get(port) == "tcp":
            continue
        name = f"inbound|{port}"
        guard = ([{"type": "Authorization",
                   "policies": [msgspec.to_builtins(x) for x in authz[port].policies]}]
                 if port in authz else [])
        scoped = rules_of.get(port, [])
        whole = next((r.filters for r in scoped if r.scope == ""), ())
        rules: list[dict[str, Any]] = []
        for r in scoped:
            if r.scope == "":
                continue
            own = {type(f) for f in r.filters}
            filters = [*r.filters, *(f for f in whole if type(f) not in own)]
            rules.append({"name": f"{name}|{r.scope}", "backends": [{"cluster": name}],
                          "matches": [msgspec.to_builtins(m) for m in r.matches],
                          "filters": guard + [msgspec.to_builtins(f) for f in filters]})
        rule: dict[str, Any] = {"name": name, "backends": [{"cluster": name}]}
        catch_all = guard + [msgspec.to_builtins(f) for f in whole]
        if catch_all:
            rule["filters"] = catch_all
        rules.append(rule)
        tables.append({"name": name, "virtual_hosts": [
            {"name": name, "domains": ["*"], "rules": rules}]})
    return tables


def outbound_listener(proxy: Proxy) -> dict[str, Any]:
    """The listener the application calls every Service through.  It carries HTTP/1.1 and h2c
    (gRPC) alike, so it sniffs which one; with a route table and no cluster it relays nothing:
    what is not HTTP is refused, and a client silent past the detect timeout is closed."""
    return {"name": "outbound", "address": "127.0.0.1", "port": proxy.outbound_port,
            "protocol": "auto", "route_table": "outbound"}


__all__ = ["DEFAULT_OUTBOUND_PORT", "ProxyMemo", "derive_proxies", "derive_proxy", "inbound",
           "inbound_tables", "outbound_listener"]
