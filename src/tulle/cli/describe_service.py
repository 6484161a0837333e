"""`tulle describe service NAME`: what the mesh does with one Service, in one place (like
`istioctl x describe` and `kumactl inspect`): its endpoints (the selected Workloads and whether
their proxy is up), the routes attached to it (producer routes in its namespace, consumer
routes elsewhere) with their status, the policies targeting it, and what each connected proxy
got for it (its cluster's endpoint count at the version the proxy runs).

Everything comes from the REST API the other commands use; proxies are asked one by one, at
most `MAX_PROXIES` of them, so a large mesh answers quickly and says how many it skipped.
"""

from __future__ import annotations

from typing import Any

import click

from tulle.api.conditions import summary
from tulle.cli.client import APIError, call
from tulle.cli.proxy_state import draining, starting

ROUTE_TYPES = ("httproutes", "grpcroutes", "tcproutes")
MAX_PROXIES = 20


def _attached(route: dict[str, Any], name: str, ns: str) -> list[str]:
    """The ports (or "*") by which `route` attaches to Service ns/name."""
    route_ns = (route.get("metadata") or {}).get("namespace")
    out = []
    for ref in (route.get("spec") or {}).get("parentRefs") or []:
        if ref.get("kind") == "Service" and ref.get("name") == name \
                and (ref.get("namespace") or route_ns) == ns:
            out.append(str(ref.get("port") or "*"))
    return out


def _policies(srv: str, name: str, ns: str) -> list[dict[str, Any]]:
    kinds = call(srv, "GET", "/api/v1/api-resources")["resources"]
    found = []
    for k in kinds:
        if not k.get("policy"):
            continue
        for p in call(srv, "GET", f"/api/v1/resources/{k['name']}",
                      query={"namespace": ns})["items"]:
            t = (p.get("spec") or {}).get("targetRef") or {}
            if t.get("kind") == "Service" and t.get("name") == name:
                found.append(p)
    return found


def _cluster_of(cfg: dict[str, Any], name: str, ns: str) -> list[dict[str, Any]]:
    suffix = f"||{name}.{ns}"
    return [c for c in cfg.get("clusters") or [] if str(c.get("name", "")).endswith(suffix)]


def describe_service(srv: str, svc: dict[str, Any]) -> None:
    md = svc.get("metadata") or {}
    name, ns = str(md.get("name")), str(md.get("namespace") or "default")
    selector = (svc.get("spec") or {}).get("selector") or {}
    try:
        workloads = call(srv, "GET", "/api/v1/resources/workloads", query={
            "namespace": ns,
            "labelSelector": ",".join(f"{k}={v}" for k, v in sorted(selector.items()))}
        )["items"] if selector else []
        routes = [r for t in ROUTE_TYPES
                  for r in call(srv, "GET", f"/api/v1/resources/{t}")["items"]
                  if _attached(r, name, ns)]
        policies = _policies(srv, name, ns)
        proxies = [p for p in call(srv, "GET", "/api/v1/proxies")["items"] if p.get("connected")]
    except APIError as exc:
        click.echo(f"error: {exc}", err=True)
        return
    click.echo("Endpoints:" + ("" if workloads else " <none> (no Workload matches the selector)"))
    if workloads:
        rows = [["WORKLOAD", "ADDRESS", "PROXY"]]
        for w in workloads:
            proxy = (w.get("status") or {}).get("proxy") or {}
            state = {"Connected": "connected", "Disconnected": "disconnected: not an endpoint"
                     }.get(str(proxy.get("state")), "none (declared)")
            if draining(proxy):
                state = "draining: not an endpoint"  # (ADR 0092)
            elif starting(proxy):
                state = "starting: not an endpoint yet"  # (ADR 0116)
            rows.append([w["metadata"]["name"], (w.get("spec") or {}).get("address") or "-",
                         state])
        _indented(rows)
    click.echo("Routes:" + ("" if routes else " <none> (the Service's default route: every "
                                              "backend endpoint, round robin by policy)"))
    if routes:
        rows = [["ROUTE", "NAMESPACE", "PORTS", "ROLE", "ACCEPTED", "REASON"]]
        for r in routes:
            rns = r["metadata"].get("namespace")
            accepted, reason = summary(r)
            rows.append([f"{r['kind'].lower()}/{r['metadata']['name']}", rns,
                         ",".join(_attached(r, name, ns)),
                         "producer" if rns == ns else "consumer (only its namespace's clients)",
                         accepted, reason])
        _indented(rows)
    click.echo("Policies:" + ("" if policies else " <none> (mesh and namespace defaults apply)"))
    if policies:
        rows = [["POLICY", "SECTION", "ACCEPTED", "REASON"]]
        for p in policies:
            accepted, reason = summary(p)
            t = (p.get("spec") or {}).get("targetRef") or {}
            rows.append([f"{p['kind'].lower()}/{p['metadata']['name']}",
                         str(t.get("sectionName") or "-"), accepted, reason])
        _indented(rows)
    _proxies_view(srv, proxies, name, ns)


def _proxies_view(srv: str, proxies: list[dict[str, Any]], name: str, ns: str) -> None:
    asked = proxies[:MAX_PROXIES]
    rows = [["PROXY", "VERSION", "CLUSTERS", "ENDPOINTS"]]
    for p in asked:
        try:
            out = call(srv, "GET", f"/api/v1/proxies/{p['namespace']}/{p['name']}/config")
        except APIError:
            continue
        clusters = _cluster_of(out["config"], name, ns)
        if not clusters:
            continue
        rows.append([f"{p['namespace']}/{p['name']}", str(out["config"].get("version")),
                     ",".join(c["name"] for c in clusters),
                     ",".join(str(len(c.get("endpoints") or [])) for c in clusters)])
    skipped = len(proxies) - len(asked)
    click.echo("Proxies that route to it:" + ("" if len(rows) > 1 else " <none>")
               + (f" ({skipped} more connected proxies not asked)" if skipped else ""))
    if len(rows) > 1:
        _indented(rows)


def _indented(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  " + "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


__all__ = ["describe_service"]
