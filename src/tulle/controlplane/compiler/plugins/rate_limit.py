"""`RateLimitPolicy` -> `RateLimit` HTTP filters and `rate_limit` network filters on the
inbound ports of the target's workloads (ADR 0041).

Scopes and precedence: `inbound_policies` (port scope: Service, namespace, Mesh; rule scopes
for route-targeted policies).  Per scope the merged `local`, `global` and `tcp` (each whole)
become the proxy's config: `local` and `global` a `RateLimit` filter on the port's HTTP route
table (after authorization), `tcp` a `rate_limit` network filter on a `tcp` port (an HTTP
port's `tcp` is not rendered: it has requests to limit).  The global counter's key names the
policy that set `global` and the Services the port serves (or the route rule), so every
replica of a Service shares it and nothing else does.

Status: per policy `Accepted` (`Enforced`, `Conflicted`, `Overridden`, `TargetNotFound`);
per Service a `RateLimits` condition with each value and who set it (`describe`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
from msgspec.structs import replace

from tulle.api.fields import duration_ms
from tulle.controlplane.compiler.inbound_policies import (
    Merged,
    Scope,
    Tally,
    add_filters,
    conditions,
    scopes,
    service_conditions,
)
from tulle.controlplane.compiler.ir import MeshModel, Proxy
from tulle.controlplane.compiler.plugins.base import Plugin
from tulle.proxyconfig.filters.ratelimit import RateLimit
from tulle.proxyconfig.network.rate_limit import ConnectionRateLimit

NAME = "rate_limit"
KIND = "RateLimitPolicy"
FIELDS = ("local", "global", "tcp")


def _local(v: dict[str, Any]) -> dict[str, Any]:
    by = v.get("by") or {}
    out = {"requests": v["requests"], "interval_ms": duration_ms(v["interval"]),
           "by": str(by.get("type") or "Route").lower()}
    if by.get("name"):
        out["header"] = by["name"]
    if v.get("maxBuckets"):
        out["max_buckets"] = v["maxBuckets"]
    return out


def _global(v: dict[str, Any], key: str) -> dict[str, Any]:
    out = {"requests": v["requests"], "interval_ms": duration_ms(v["interval"]),
           "redis": v["redis"], "key": key,
           "failure_mode": str(v.get("failureMode") or "Open").lower(),
           "timeout_ms": duration_ms(v.get("timeout") or "10ms")}
    if v.get("fallbackRequests"):
        out["fallback_requests"] = v["fallbackRequests"]
    if v.get("passwordFile"):
        out["password_file"] = v["passwordFile"]
        if v.get("username"):
            out["username"] = v["username"]
    if isinstance(v.get("tls"), dict):
        tls = v["tls"]
        out["tls"] = {k: tls[src] for k, src in (("ca_file", "caFile"),
                                                 ("server_name", "serverName")) if tls.get(src)}
    return out


def _key(scope: Scope, source: str, proxy: Proxy) -> str:
    """Shared by the replicas of the Service(s) the port serves; a limit a route-level policy
    set counts that rule's requests on their own, any other counts with the port's."""
    policy = source.split(" ", 1)[1]
    own = scope.name if source in scope.route_sources else ""
    where = own or "+".join(f"{ns}/{n}" for ns, n in scope.services) or (
        f"{proxy.key[0]}/{proxy.service or proxy.key[1]}")
    key = f"{policy}|{where}"
    if len(key) > 250:  # many Services: a digest of them, the same on every replica
        key = f"{policy}|{hashlib.sha256(where.encode()).hexdigest()[:32]}"
    return key


def http_filter(scope: Scope, merged: Merged, proxy: Proxy) -> RateLimit | None:
    cfg: dict[str, Any] = {"type": "RateLimit"}
    if "local" in merged:
        cfg["local"] = _local(merged["local"][0])
    if "global" in merged:
        value, source = merged["global"]
        cfg["global"] = _global(value, _key(scope, source, proxy))
    if len(cfg) == 1:
        return None
    cfg["name"] = ",".join(sorted({merged[f][1].split(" ", 1)[1] for f in ("local", "global")
                                   if f in merged}))
    return msgspec.convert(cfg, RateLimit)


def _render_local(v: dict[str, Any]) -> str:
    by = (v.get("by") or {}).get("type") or "Route"
    name = (v.get("by") or {}).get("name")
    return f"{v['requests']}/{v['interval']} by {by}" + (f" {name}" if name else "")


def _render_global(v: dict[str, Any]) -> str:
    extra = (", TLS" if v.get("tls") is not None else "") + \
        (", AUTH" if v.get("passwordFile") else "")
    return (f"{v['requests']}/{v['interval']} via {v['redis']}{extra} "
            f"(fail {str(v.get('failureMode') or 'Open').lower()})")


RENDER = {"local": _render_local, "global": _render_global,
          "tcp": lambda v: f"{v['connections']} connections/{v['interval']}"}


def apply(mesh: MeshModel) -> MeshModel:
    tally = Tally()
    found = scopes(mesh, KIND, FIELDS, tally)
    protocols = {p.key: {ip.port: ip.protocol for ip in p.inbound} for p in mesh.proxies}

    def bind(proxy: Proxy) -> Proxy:
        mine = found.get(proxy.key)
        if not mine:
            return proxy
        http: list[tuple[Scope, Any]] = []
        network: list[tuple[int, Any]] = []
        for sc in mine:
            tcp_port = protocols[proxy.key].get(sc.port) == "tcp"
            if tcp_port:
                if sc.name == "" and "tcp" in sc.merged:
                    v = sc.merged["tcp"][0]
                    network.append((sc.port, ConnectionRateLimit(
                        connections=v["connections"], interval_ms=duration_ms(v["interval"]))))
                continue
            try:
                f = http_filter(sc, sc.merged, proxy)
            except msgspec.ValidationError as exc:
                tally.refuse(sc.merged, str(exc))
                continue
            if f is not None:
                http.append((sc, f))
        return add_filters(proxy, http, network) if http or network else proxy

    proxies = tuple(bind(x) for x in mesh.proxies)
    conds = service_conditions(mesh, KIND, FIELDS, "RateLimits", RENDER)
    conds.update(conditions(mesh, KIND, tally))
    return replace(mesh, proxies=proxies, conditions=conds)


PLUGIN = Plugin(NAME, apply, affects=("proxies", "conditions"))
