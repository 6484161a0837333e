"""One hop of a trace: from the caller's proxy, through a backend cluster, to one destination
workload's inbound listener -- how the connection is secured, which filter chain takes it, and
which authorization decision the destination's proxy makes.

mTLS is read from the compiled configuration only, whatever the compiler emits for
`Mesh.spec.mtls` (ADR 0030: no "mode" field, the mode *is* the config): the client side from
the cluster's `tls` (`expected_spiffe_ids`, `identity`, `trust_bundle`, the ALPN the dialler
offers: `runtime.tls.client_alpn`), the server side from the inbound listener's filter chains,
chosen by the proxy's own selection (`listeners/chains.select`) on the facts the connection
would have (destination, transport, SNI, ALPN).  Authorization runs the proxy's `Engine`
(`dataplane/filters/authz.py`) compiled from the route's `Authorization` filter, or the L4
`authz` network filter for opaque TCP ports.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from tulle.cli.explain.fault import aborts, trace_fault
from tulle.cli.explain.routing import forwarded, trace_table
from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.filters.authz import Engine, Peer, Verdict, authz_path, denied_body
from tulle.dataplane.listeners.chains import ChainRule, select
from tulle.dataplane.protocols.h2translate import is_grpc
from tulle.dataplane.routing.router import Route
from tulle.dataplane.runtime.tls import SERVER_ALPN, client_alpn
from tulle.proxyconfig.filters import Authorization
from tulle.proxyconfig.model import Cluster, Endpoint, Listener, ProxyConfig, TLSContext
from tulle.proxyconfig.network.authz import NetworkAuthz

Lookup = Callable[[str, str], "tuple[ProxyConfig, str] | None"]
"""(namespace, workload) -> (its proxy's snapshot, "acked" | "desired"), or None."""
IdentityOf = Callable[[str, str], str]
"""(namespace, workload) -> the SPIFFE ID its certificate carries."""
PolicySpec = Callable[[str], "Mapping[str, Any] | None"]
"""An AuthorizationPolicy's spec as written, by `namespace/name`; None when unknown."""


def client_tls(cluster: Cluster) -> dict[str, Any]:
    """What the caller's proxy does when it dials `cluster`."""
    tls = cluster.tls
    if tls is None:
        return {"mode": "plaintext", "why": f"cluster {cluster.name} has no tls: the proxy "
                                            "dials plaintext"}
    mtls = bool(tls.identity or tls.cert_file)
    out: dict[str, Any] = {
        "mode": "mTLS" if mtls else "TLS",
        "presents": tls.identity or tls.cert_file or None,
        "verifiesWith": tls.trust_bundle or tls.ca_file or None,
        "expectedIdentities": list(tls.expected_spiffe_ids),
        "serverName": tls.server_name or None,
        "alpn": client_alpn(cluster.protocol, tls),
        "minVersion": tls.min_version}
    out["why"] = (f"cluster {cluster.name} has tls"
                  + (f" with identity {out['presents']}" if mtls else " without a client "
                     "certificate")
                  + (f"; the server must be one of {len(tls.expected_spiffe_ids)} SPIFFE IDs"
                     if tls.expected_spiffe_ids else "; no SPIFFE ID check"))
    return out


def _requires_client_cert(tls: TLSContext | None) -> bool:
    return tls is not None and bool(tls.trust_bundle or tls.ca_file)


def server_modes(listener: Listener) -> str:
    """What the inbound port accepts, in the Mesh's words (derived from the chains)."""
    tls = any(fc.tls is not None and fc.match.transport in ("tls", "any")
              and _requires_client_cert(fc.tls) for fc in listener.filter_chains)
    plain = any(fc.tls is None and fc.match.transport in ("plaintext", "any")
                for fc in listener.filter_chains) or (
        listener.tls is None and bool(listener.route_table or listener.cluster))
    if listener.tls is not None and _requires_client_cert(listener.tls):
        tls = True
    if tls and plain:
        return "PERMISSIVE (mTLS or plaintext)"
    if tls:
        return "STRICT (mTLS only)"
    return "DISABLED (plaintext only)"


def _inbound_listener(cfg: ProxyConfig, ep: Endpoint) -> Listener | None:
    """The listener on the endpoint's port; else the transparent inbound listener iptables
    hands every inbound connection (its chains pick by the original destination port): on the
    endpoint's address (sidecar, ADR 0044), else the one on the node agent's loopback that
    the pod's address is DNAT'd to (`interception: agent`, ADR 0047)."""
    for lst in cfg.listeners:
        if lst.direction == "inbound" and lst.port == ep.port and lst.address in (
                ep.address, "0.0.0.0", "::"):
            return lst
    md = ep.metadata
    owner = f"{md.namespace}/{md.workload}" if md is not None else ""
    transparent = [x for x in cfg.listeners if x.direction == "inbound"
                   and x.mode == "transparent" and x.workload in ("", owner)]
    return next((x for x in transparent if x.address in (ep.address, "0.0.0.0", "::")),
                transparent[0] if len(transparent) == 1 else None)


def _chain(listener: Listener, ep: Endpoint, client: dict[str, Any]
           ) -> tuple[str | None, TLSContext | None, str, str, list[Any], str]:
    """(chain name or None when refused, its tls, route table, cluster, network filters,
    why) for a connection from a client doing `client` to `ep`."""
    transport = "plaintext" if client["mode"] == "plaintext" else "tls"
    if listener.filter_chains:
        rules = [ChainRule(fc.name, fc.match, fc.protocol, fc.tls, None, None, fc.cluster,
                           None) for fc in listener.filter_chains]
        got = select(rules, ep.address, ep.port, transport, client.get("serverName"),
                     client.get("alpn") or ())
        if got is not None:
            fc = next(f for f in listener.filter_chains if f.name == got.name)
            return (fc.name, fc.tls, fc.route_table, fc.cluster, list(fc.network_filters),
                    f"filter chain {fc.name!r} takes a {transport} connection")
    if listener.route_table or listener.cluster:
        return ("(listener default)", listener.tls, listener.route_table, listener.cluster,
                list(listener.network_filters),
                f"{'no filter chain matches' if listener.filter_chains else 'no filter chains'}"
                f": the listener's own fields take the {transport} connection")
    return (None, None, "", "", [], f"no filter chain of {listener.name} takes a {transport} "
                                   "connection and the listener has no default: the proxy "
                                   "closes it (counted no_filter_chain)")


def _alpn(server: TLSContext | None, offered: list[str]) -> str | None:
    ours = list(server.alpn) if server is not None and server.alpn else list(SERVER_ALPN)
    return next((p for p in ours if p in offered), None)


def _verdict_doc(v: Verdict, engine_policies: list[Any], grpc: bool = False,
                 rule: int | None = None) -> dict[str, Any]:
    """The authorization step; `grpc`: the request is gRPC, which the proxy refuses with
    grpc-status 7 in an HTTP 200, not a 403 (gRPC's status mapping, as Envoy answers);
    `rule`: the deciding rule as written (`_as_written`), else the verdict's own."""
    rule = v.rule if rule is None else rule
    out: dict[str, Any] = {
        "allowed": v.allowed, "policy": v.policy if v.policy != "-" else "default",
        "action": v.action if v.action != "-" else None,
        "rule": rule if rule >= 0 else None,
        "events": [{"policy": p, "action": a, "result": r} for p, a, r in v.events[1:]],
        "policies": engine_policies}
    if v.policy == "-":
        out["why"] = ("no DENY policy matches and no ALLOW policy applies: allowed"
                      if engine_policies else
                      "no policy applies to this port: allowed by default")
    elif not v.allowed and v.action == "DENY":
        out["why"] = f"DENY policy {v.policy} rule {rule} matches (DENY beats ALLOW)"
    elif not v.allowed:
        out["why"] = f"ALLOW policies apply and none matches ({v.policy})"
    else:
        out["why"] = f"ALLOW policy {v.policy} rule {rule} matches and no DENY policy does"
    if not v.allowed:
        out["body"] = denied_body(v).decode()
        out.update(DENIED_GRPC if grpc else DENIED_HTTP)
    return out


DENIED_HTTP: dict[str, Any] = {"status": 403}
DENIED_GRPC: dict[str, Any] = {"status": 200, "grpcStatus": 7, "grpcCode": "PERMISSION_DENIED"}


def _policies(cfg: Authorization | NetworkAuthz) -> list[dict[str, Any]]:
    return [{"name": p.name, "action": p.action, "dryRun": p.dry_run, "rules": len(p.rules)}
            for p in cfg.policies]


def _as_written(v: Verdict, policies: list[dict[str, Any]], port: int,
                spec_of: PolicySpec | None) -> int:
    """The deciding rule's number as written, with each listed policy's count as written:
    the compiled policy leaves out the rules whose operations all name other ports
    (`rules_on_port`), so its positions drift from the resource's once one is left out."""
    rule = v.rule
    if spec_of is None:
        return rule
    from tulle.controlplane.compiler.plugins.authorization import rules_on_port

    for p in policies:
        spec = spec_of(p["name"])
        if spec is None:
            continue
        kept = rules_on_port(spec, port)
        written = len(spec.get("rules") or [])
        if written != p["rules"]:
            p["rules"], p["rulesOnThisPort"] = written, len(kept)
        if p["name"] == v.policy and 0 <= v.rule < len(kept):
            rule = kept[v.rule]
    return rule


def trace_hop(cluster: Cluster, ep: Endpoint, lookup: Lookup, identity_of: IdentityOf,
              source: tuple[str, str], source_address: str, head: RequestHead,
              spec_of: PolicySpec | None = None) -> dict[str, Any]:
    """One endpoint of a backend cluster, as the destination's proxy sees the request;
    `spec_of` gives rule numbers as written (`_as_written`)."""
    md = ep.metadata
    ns, name = (md.namespace, md.workload) if md is not None else ("", "")
    doc: dict[str, Any] = {"endpoint": f"{ep.address}:{ep.port}",
                           "workload": f"{ns}/{name}" if name else None}
    client = client_tls(cluster)
    doc["client"] = client
    got = lookup(ns, name) if name else None
    if got is None:
        doc.update(result="unknown_destination",
                   why="the endpoint names no workload with a proxy snapshot: what answers "
                       "there is not known to the mesh")
        return doc
    cfg, state = got
    doc["destinationConfig"] = {"version": cfg.version, "source": state}
    if state != "acked":
        doc["destinationConfig"]["note"] = ("its proxy has not ACKed this snapshot (not "
                                            "connected yet, or it NACKed): traced as desired")
    server_id = identity_of(ns, name)
    doc["serverIdentity"] = server_id
    expected = client.get("expectedIdentities") or []
    if expected and server_id not in expected:
        doc.update(result="refused_by_client", status=503,
                   why=f"the server's identity {server_id} is not one expected for the "
                       "destination: the caller's proxy refuses the connection (503 UF)")
        return doc
    listener = _inbound_listener(cfg, ep)
    if listener is None:
        doc.update(result="no_listener", why=f"{ns}/{name}'s proxy has no inbound listener "
                                             f"on {ep.address}:{ep.port}")
        return doc
    chain, tls, table, target, network, why = _chain(listener, ep, client)
    server: dict[str, Any] = {"listener": listener.name, "accepts": server_modes(listener),
                              "chain": chain, "why": why}
    doc["server"] = server
    if chain is None:
        doc.update(result="refused_by_server", status=503, mtls="refused")
        return doc
    if tls is not None and client["mode"] == "plaintext":
        doc.update(result="refused_by_server", status=503, mtls="refused",
                   why="the chain terminates TLS and the caller's proxy dials plaintext: "
                       "the connection fails")
        return doc
    if tls is None and client["mode"] != "plaintext":
        doc.update(result="refused_by_server", status=503, mtls="refused",
                   why="the chain does not terminate TLS: the caller's TLS handshake fails")
        return doc
    mtls_on = tls is not None and _requires_client_cert(tls) and client["mode"] == "mTLS"
    doc["mtls"] = "mTLS" if mtls_on else ("TLS" if tls is not None else "plaintext")
    peer_identity = identity_of(*source) if mtls_on else ""
    doc["peerIdentity"] = peer_identity or None
    if tls is not None:
        server["alpn"] = _alpn(tls, client.get("alpn") or [])
    if server.get("alpn") == "tulle-tcp" or listener.protocol == "tcp":
        return _l4(doc, network, peer_identity, source_address, target, ep.port, spec_of)
    if not table:
        doc.update(result="forwarded", cluster=target or None, authorization={
            "allowed": True, "policy": "default", "why": "no route table on this port: no "
            "authorization policy targets it, HTTP goes to the application as it is"})
        return doc
    # The destination's proxy adds its own forwarding fields (the caller's proxy appended
    # to x-forwarded-for) before it routes and authorizes.
    head = forwarded(head, source_address, cfg.settings.generate_request_id)
    routed, route = trace_table(cfg, table, head)
    doc["inboundRoute"] = routed
    if route is None:
        doc.update(result="no_route", status=routed.get("status", 404))
        return doc
    authz = next((f for f in route.rule.filters if isinstance(f, Authorization)), None)
    if authz is None:
        doc.update(result="forwarded", authorization={
            "allowed": True, "policy": "default", "why": "no authorization filter on the "
            "route: no policy targets this port"}, cluster=route.clusters[0] if
            route.clusters else None)
        return _faulted(doc, route, head)
    v = Engine(authz.policies).decide(Peer(peer_identity, source_address), head,
                                      authz_path(head.path))
    grpc = is_grpc(head)
    listed = _policies(authz)
    doc["authorization"] = _verdict_doc(v, listed, grpc, _as_written(v, listed, ep.port,
                                                                      spec_of))
    doc["result"] = "forwarded" if v.allowed else "denied"
    if v.allowed:
        doc["cluster"] = route.clusters[0] if route.clusters else None
        return _faulted(doc, route, head)
    doc.update(DENIED_GRPC if grpc else DENIED_HTTP)
    return doc


def _faulted(doc: dict[str, Any], route: Route, head: RequestHead) -> dict[str, Any]:
    """An admitted request meets the route's fault filter (`fault.py`): aborted when every
    request like it is."""
    fault = trace_fault(route, head)
    if fault is None:
        return doc
    doc["fault"] = fault
    if aborts(fault):
        doc.update(result="aborted", status=fault["abort"]["status"], why=fault["why"])
        if "grpcStatus" in fault["abort"]:
            doc["grpcStatus"] = fault["abort"]["grpcStatus"]
        doc.pop("cluster", None)
    return doc


def _l4(doc: dict[str, Any], network: list[Any], identity: str, address: str,
        target: str, port: int = 0, spec_of: PolicySpec | None = None) -> dict[str, Any]:
    authz = next((f for f in network if isinstance(f, NetworkAuthz)), None)
    doc["relay"] = "opaque TCP"
    if authz is None:
        doc.update(result="forwarded", cluster=target or None, authorization={
            "allowed": True, "policy": "default", "why": "no authz network filter"})
        return doc
    v = Engine(authz.policies).decide(Peer(identity, address), None)
    listed = _policies(authz)
    doc["authorization"] = _verdict_doc(v, listed, rule=_as_written(v, listed, port, spec_of))
    doc["result"] = "forwarded" if v.allowed else "closed"
    return doc
