"""`tulle explain`: an offline decision trace of one request over the compiled configuration.

Why: "RBAC: access denied" with no way to tell which policy decided (istio/istio#39802) is what
operators get from meshes today.  This walks one request the way the proxies would -- the
caller's outbound side (listener, route table, virtual host, the rule and match that win and
why the ones ahead did not, filters in run order, weighted backends, timeouts), then each hop
to a destination workload (mTLS or plaintext and why, the filter chain, the inbound route, the
authorization policy and rule that decide) -- and says what the client would get.

It is not a second implementation: every decision is made by the data plane's own pure code
on the snapshots the control plane serves those proxies (`routing.py`, `hop.py`), so the trace
cannot drift from what the proxies do; the tests send the same request through real proxies
and compare.  The CLI computes it from what the REST API already serves (`proxy-config`, the
Workload resources), so a read-only token suffices, the control plane never runs data-plane
code (tests/unit/test_import_directions.py) and the request's header values never leave the
operator's machine.  A transparent caller (ADR 0044) has no Host-routed table: its hop is
the outbound destination whose address:port is the Service's VIP and port (`transparent.py`),
and the trace says so.  What the caller's proxy changes on the way (its rewrites and header
edits, or the redirect it answers) runs by the proxy's own filters (`edits.py`), and the
destination's fault injection is read where it runs, after authorization (`fault.py`).
`-o json` prints the document built here (`API_VERSION`, documented in
docs/reference/explain.md).  ADR 0036.
"""

from __future__ import annotations

from typing import Any

from tulle.cli.explain import retries
from tulle.cli.explain.edits import changes, location, sent
from tulle.cli.explain.fault import always_delayed_ms
from tulle.cli.explain.hop import IdentityOf, Lookup, PolicySpec, trace_hop
from tulle.cli.explain.request import ExplainError, ExplainRequest, build_request
from tulle.cli.explain.routing import filters_doc, forwarded, head_for, normalized, trace_table
from tulle.cli.explain.transparent import original_destination, transparent_outbound
from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.routing.router import Route
from tulle.proxyconfig.filters import RequestHeaderModifier, URLRewrite
from tulle.proxyconfig.model import ProxyConfig

API_VERSION = "explain.tulle.dev/v1alpha1"
MAX_HOPS = 16
"""Destination endpoints traced per request (a backend with hundreds of endpoints is shown by
its first ones; `endpointsNotShown` counts the rest)."""


def explain(req: ExplainRequest, lookup: Lookup, identity_of: IdentityOf,
            spec_of: PolicySpec | None = None) -> dict[str, Any]:
    """The trace document of `req`; raises `ExplainError` for an unknown workload or service.
    `spec_of`: authorization policies as written, for rule numbers as written."""
    got = lookup(req.namespace, req.workload)
    if got is None:
        raise ExplainError(404, "from", f"no proxy snapshot for workload {req.source}")
    cfg, state = got
    doc: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "request": {"from": req.source, "authority": req.authority, "method": req.method,
                    "path": req.path, "headers": [n for n, _ in req.headers]},
        "source": {"workload": req.source, "configVersion": cfg.version,
                   "configSource": state}}
    listener = next((x for x in cfg.listeners if x.direction == "outbound"
                     and x.route_table), None)
    table = listener.route_table if listener is not None else ""
    original: dict[str, Any] | None = None
    tcp_cluster = ""
    if listener is None and (listener := transparent_outbound(cfg)) is not None:
        dest, original = original_destination(listener, req.authority, req.namespace)
        table, tcp_cluster = dest.route_table, "" if dest.route_table else dest.cluster
    if listener is None:
        raise ExplainError(404, "from", f"workload {req.source} has no outbound listener with "
                                        "a route table (no Service to call in its snapshot)")
    address = next((x.address for x in cfg.listeners if x.direction == "inbound"), "127.0.0.1")
    doc["source"]["address"] = address
    path, why = normalized(cfg, req.path)
    outbound: dict[str, Any] = {"listener": listener.name, "path": path, "pathWhy": why}
    if original is not None:
        outbound["originalDestination"] = original
    doc["outbound"] = outbound
    # As the caller's proxy routes it: with the forwarding fields it adds first.
    head = forwarded(head_for(req.method, path or "/", req.authority, req.headers), address,
                     cfg.settings.generate_request_id)
    if tcp_cluster:
        outbound.update(result="tcp", cluster=tcp_cluster,
                        why=f"TCP cluster {tcp_cluster}, no HTTP routing")
        doc["hops"] = _hops(req, [(tcp_cluster, 1)], cfg, lookup, identity_of, address, head,
                            spec_of)
        doc["outcome"] = outcome(doc["hops"])
        return doc
    if path is None:
        doc["outcome"] = {"status": 400, "summary": f"the caller's proxy refuses the path: "
                                                   f"{why[5:]}"}
        return doc
    routed, route = trace_table(cfg, table, head)
    outbound.update(routed)
    if routed.get("result") == "no_virtual_host":
        raise ExplainError(404, "to", f"{routed['why']}: unknown service or port")
    if original is None and ":" in req.authority and req.authority not in outbound.get(
            "domains", ()):
        raise ExplainError(404, "to", f"no Service port answers to {req.authority!r} (the "
                                      f"proxy would route it to {outbound['virtualHost']} by "
                                      "the name without the port)")
    if route is None:
        doc["outcome"] = {"status": routed.get("status", 404),
                          "summary": f"the caller's proxy answers {routed.get('status', 404)}:"
                                     f" {routed.get('why')}"}
        return doc
    own = {type(f).__name__ for f in route.rule.filters
           if isinstance(f, URLRewrite | RequestHeaderModifier)}
    backends = {type(f).__name__ for b in route.rule.backends for f in b.filters
                if isinstance(f, URLRewrite | RequestHeaderModifier)}
    editing = sorted(own | backends)
    if editing:
        whose = ("this rule's" if not backends else "its backends'" if not own
                 else "this rule's and its backends'")
        outbound["note"] = (f"{whose} {' and '.join(editing)} "
                            f"change{'s' if len(editing) == 1 else ''} the request before "
                            "the destination decides; the inbound steps below see it as the "
                            "caller's proxy sends it (hops[].request)")
    if "localReply" in routed:
        _, replied = sent(route, None, head)
        if replied is not None:  # a RequestRedirect: the caller's proxy answers itself
            status, where = replied[0], location(replied)
            outbound["localReply"] = (
                f"redirect: the caller's proxy answers {status} with location {where}")
            doc["outcome"] = {"status": status, "location": where,
                              "summary": outbound["localReply"]}
            return doc
    hops = _hops(req, [(b.cluster, b.weight) for b in route.rule.backends], cfg, lookup,
                 identity_of, address, head, spec_of, route)
    _delays(hops, route)
    from tulle.dataplane.protocols.h2translate import is_grpc  # as fault.py: only when traced

    retries.annotate(hops, route, req.method, is_grpc(head))
    doc["hops"] = hops
    doc["outcome"] = outcome(hops)
    return doc


def _hops(req: ExplainRequest, backends: list[tuple[str, int]], cfg: ProxyConfig,
          lookup: Lookup, identity_of: IdentityOf, address: str, head: RequestHead,
          spec_of: PolicySpec | None = None, route: Route | None = None
          ) -> list[dict[str, Any]]:
    """Each backend (cluster, weight) and up to `MAX_HOPS` of its endpoints, traced; with
    the `route` taken, each backend's request is the one the caller's proxy sends it (after
    the rule's and that backend's request edits, `edits.sent`)."""
    clusters = {c.name: c for c in cfg.clusters}
    hops: list[dict[str, Any]] = []
    shown = 0
    for name, weight in backends:
        c = clusters.get(name)
        entry: dict[str, Any] = {"cluster": name, "weight": weight}
        hops.append(entry)
        if weight == 0:
            entry["why"] = "weight 0: never chosen"
            continue
        sends = head
        if route is not None:
            if any(b.cluster == name and b.filters for b in route.rule.backends):
                entry["filters"] = filters_doc(route, name)
            sends, _ = sent(route, name, head)
            changed = changes(head, sends)
            if changed is not None:
                entry["request"] = changed
        if c is None or c.unresolved:
            entry.update(status=500, why="unresolved backend: the caller's proxy answers 500")
            continue
        if not c.endpoints:
            entry.update(status=503, why="no endpoints: the caller's proxy answers 503 UH")
            continue
        entry["endpoints"] = []
        for ep in c.endpoints:
            if shown >= MAX_HOPS:
                entry["endpointsNotShown"] = entry.get("endpointsNotShown", 0) + 1
                continue
            shown += 1
            entry["endpoints"].append(trace_hop(c, ep, lookup, identity_of,
                                                (req.namespace, req.workload), address, sends,
                                                spec_of))
    return hops


def _delays(hops: list[dict[str, Any]], route: Route) -> None:
    """An endpoint whose fault delays every request like this one at least as long as the time
    the request is given (the caller's per-try or request timeout, the destination's request
    timeout) answers 504 (`result: timed_out`), as the proxies do: retries of a try that
    timed out are delayed alike."""
    for h in hops:
        for ep in h.get("endpoints") or []:
            ms = always_delayed_ms(ep.get("fault"))
            if not ms or ep.get("result") != "forwarded":
                continue
            inbound = ((ep.get("inboundRoute") or {}).get("timeouts") or {}).get("requestMs", 0)
            limits = [(t, what, which) for t, what, which in (
                (route.rule.backend_timeout_ms or 0, "the caller's per-try timeout", "per-try"),
                (route.timeout_ms, "the caller's request timeout", "request"),
                (inbound, "the destination's request timeout", "destination")) if t]
            if not limits:
                continue
            limit, what, which = min(limits)
            if ms >= limit:
                ep.update(result="timed_out", status=504, timeout=which,
                          why=f"every request like this one is delayed {ms} ms by the fault, "
                              f"not less than {what} ({limit} ms): 504")
                ep.pop("cluster", None)


def outcome(hops: list[dict[str, Any]]) -> dict[str, Any]:
    """What the client gets: per chosen backend (with its share when there are several) the
    first endpoint's result; `status`, `policy` and `rule` are those of the first backend."""
    live = [h for h in hops if h.get("weight", 0) > 0]
    total = sum(h["weight"] for h in live)
    parts: list[dict[str, Any]] = [_backend_outcome(h) for h in live]
    if not parts:
        return {"status": 503, "summary": "no backend with a weight: the caller's proxy "
                                          "answers 503"}
    if len(parts) == 1:
        return parts[0]
    summary = "; ".join(f"{round(100 * h['weight'] / total, 2)}% ({h['cluster']}): "
                        f"{p['summary']}" for h, p in zip(live, parts, strict=True))
    return {**parts[0], "summary": summary, "byBackend": parts}


def _backend_outcome(h: dict[str, Any]) -> dict[str, Any]:
    if not h.get("endpoints"):
        return {"status": h.get("status"), "summary": h.get("why", "")}
    ep = h["endpoints"][0]
    a = ep.get("authorization") or {}
    where = ep.get("workload") or ep.get("endpoint")
    if ep.get("result") in ("denied", "closed"):
        what = ("closed" if ep["result"] == "closed" else
                f"grpc-status {ep['grpcStatus']} {ep['grpcCode']}" if "grpcStatus" in ep
                else "403")
        out = {"status": ep.get("status"), "summary": f"{what} by {where}: {a.get('why')}"
                                                      + _after_retries(ep),
               "policy": a.get("policy"), "rule": a.get("rule")}
        if "grpcStatus" in ep:
            out["grpcStatus"] = ep["grpcStatus"]
        return out
    if ep.get("result") in ("aborted", "timed_out"):
        by = f" by {where}" if ep["result"] == "aborted" else ""
        out = {"status": ep.get("status"), "summary": f"{ep['status']}{by}: {ep['why']}"
                                                      + _after_retries(ep)}
        if "grpcStatus" in ep:
            out["grpcStatus"] = ep["grpcStatus"]
        return out
    if ep.get("result") == "forwarded":
        return {"status": None, "summary": f"forwarded to {where} over "
                                           f"{ep.get('mtls', 'plaintext')} "
                                           f"({a.get('why', 'allowed')})",
                "policy": a.get("policy"), "rule": a.get("rule")}
    why = ep.get("why") or (ep.get("server") or {}).get("why") or ep.get("result")
    return {"status": ep.get("status"), "summary": f"{where}: {why}" + _after_retries(ep)}


def _after_retries(ep: dict[str, Any]) -> str:
    return f" ({ep['retried']})" if ep.get("retried") else ""


__all__ = ["API_VERSION", "ExplainError", "ExplainRequest", "build_request", "explain"]
