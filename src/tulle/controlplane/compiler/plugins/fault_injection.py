"""`FaultInjectionPolicy` -> `FaultInjection` HTTP filters on the inbound ports of the target's
workloads (ADR 0041).

Scopes and precedence: `inbound_policies` (port scope: the Services the port serves; rule
scopes for route-targeted policies, told apart by the rule's matches).  Per scope the merged
`delay`, `abort` and `match` (each whole) become one `FaultInjection` filter, after the port's
authorization and rate limits (the proxy's chain order).  `tcp` ports get none (no requests).

Status: per policy `Accepted` (`Enforced`, `Conflicted`, `Overridden`, `TargetNotFound`); per
Service a `FaultInjection` condition with each value and who set it (`describe`).
"""

from __future__ import annotations

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
from tulle.proxyconfig.filters.fault import FaultInjection

NAME = "fault_injection"
KIND = "FaultInjectionPolicy"
FIELDS = ("delay", "abort", "match")


def http_filter(merged: Merged) -> FaultInjection | None:
    if "delay" not in merged and "abort" not in merged:
        return None  # a match alone injects nothing
    cfg: dict[str, Any] = {"type": "FaultInjection"}
    if "delay" in merged:
        d = merged["delay"][0]
        cfg["delay"] = {"fixed_delay_ms": duration_ms(d["fixedDelay"]),
                        "percent": d.get("percent", 100)}
    if "abort" in merged:
        a = merged["abort"][0]
        cfg["abort"] = {"percent": a.get("percent", 100)}
        if a.get("httpStatus") is not None:
            cfg["abort"]["http_status"] = a["httpStatus"]
        if a.get("grpcStatus") is not None:
            cfg["abort"]["grpc_status"] = a["grpcStatus"]
    if "match" in merged:
        cfg["headers"] = [{"name": h["name"], "value": h["value"]}
                          for h in merged["match"][0].get("headers") or []]
    cfg["name"] = ",".join(sorted({src.split(" ", 1)[1] for _, src in merged.values()}))
    return msgspec.convert(cfg, FaultInjection)


def _render_abort(v: dict[str, Any]) -> str:
    statuses = [f"{label} {v[k]}" for label, k in (("HTTP", "httpStatus"), ("gRPC", "grpcStatus"))
                if v.get(k) is not None]
    return f"{', '.join(statuses)} for {v.get('percent', 100)}%"


RENDER = {
    "delay": lambda v: f"{v['fixedDelay']} for {v.get('percent', 100)}%",
    "abort": _render_abort,
    "match": lambda v: ",".join(f"{h['name']}={h['value']}" for h in v.get("headers") or []),
}


def apply(mesh: MeshModel) -> MeshModel:
    tally = Tally()
    found = scopes(mesh, KIND, FIELDS, tally)
    protocols = {p.key: {ip.port: ip.protocol for ip in p.inbound} for p in mesh.proxies}

    def bind(proxy: Proxy) -> Proxy:
        http: list[tuple[Scope, Any]] = []
        for sc in found.get(proxy.key, []):
            if protocols[proxy.key].get(sc.port) == "tcp":
                continue
            try:
                f = http_filter(sc.merged)
            except msgspec.ValidationError as exc:
                tally.refuse(sc.merged, str(exc))
                continue
            if f is not None:
                http.append((sc, f))
        return add_filters(proxy, http, ()) if http else proxy

    proxies = tuple(bind(x) for x in mesh.proxies)
    conds = service_conditions(mesh, KIND, FIELDS, "FaultInjection", RENDER)
    conds.update(conditions(mesh, KIND, tally))
    return replace(mesh, proxies=proxies, conditions=conds)


PLUGIN = Plugin(NAME, apply, affects=("proxies", "conditions"))
