"""The mesh `tulle explain`'s unit tests trace: workloads on 127.0.0.1 in namespace `shop`
(service account: the name before the first `-`), Services selecting them, compiled as the
control plane compiles them, and a trace over the result, offline."""

from __future__ import annotations

from typing import Any

import msgspec

from tulle.cli.explain import build_request, explain
from tulle.controlplane.compiler import MeshInputs, compile_mesh
from tulle.proxyconfig.model import ProxyConfig

V1 = "mesh.tulle.dev/v1alpha1"
GW = "gateway.networking.k8s.io/v1"
POLICY = "policy.tulle.dev/v1alpha1"

Snapshots = dict[tuple[str, str], ProxyConfig]


def workload(name: str, port: int, **labels: str) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "Workload",
            "metadata": {"name": name, "namespace": "shop", "labels": labels},
            "spec": {"address": "127.0.0.1", "serviceAccount": name.split("-", maxsplit=1)[0],
                     "ports": [{"name": "http", "port": port, "targetPort": port + 1000}]}}


def service(name: str, **selector: str) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"selector": selector,
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


def fault(name: str, target: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A `FaultInjectionPolicy` on `target` (a Service or an HTTPRoute rule)."""
    return {"apiVersion": POLICY, "kind": "FaultInjectionPolicy",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"targetRef": target, **spec}}


def compiled(*docs: dict[str, Any]) -> Snapshots:
    res = compile_mesh(MeshInputs.from_resources(list(docs)))
    assert not res.errors, res.errors
    return res.snapshots


def expecting(snaps: Snapshots, expected: str) -> Snapshots:
    """`snaps` with the caller's (web-0's) mesh clusters expecting another server identity."""
    out = dict(snaps)
    web = snaps[("shop", "web-0")]
    out[("shop", "web-0")] = msgspec.structs.replace(web, clusters=[
        msgspec.structs.replace(c, tls=msgspec.structs.replace(
            c.tls, expected_spiffe_ids=[expected])) if c.tls is not None else c
        for c in web.clusters])
    return out


def trace(snaps: Snapshots, path: str = "/", method: str = "GET",
          headers: tuple[str, ...] = (), to: str = "api", source: str = "shop/web-0",
          specs: dict[str, dict[str, Any]] | None = None, state: str = "desired"
          ) -> dict[str, Any]:
    """`explain`'s document for one request, with each snapshot in `state`; it must encode
    as JSON, and nothing else."""
    def lookup(ns: str, name: str) -> tuple[ProxyConfig, str] | None:
        cfg = snaps.get((ns, name))
        return (cfg, state) if cfg is not None else None

    def identity_of(ns: str, name: str) -> str:
        return f"spiffe://cluster.local/ns/{ns}/sa/{name.split('-', maxsplit=1)[0]}"

    req = build_request(source, "default", to, path, method, list(headers))
    doc = explain(req, lookup, identity_of, None if specs is None else specs.get)
    msgspec.json.encode(doc)
    return doc
