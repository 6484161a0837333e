"""Builders for the resources control-plane tests apply (Kubernetes-shaped dicts)."""

from __future__ import annotations

from typing import Any

NS = "shop"


def workload(name: str, port: int, target: int, outbound: int, ns: str = NS,
             **labels: str) -> dict[str, Any]:
    """A loopback workload: the proxy takes `port`, the app listens on `target`; the proxy's
    outbound listener is on `outbound`."""
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"address": "127.0.0.1", "outboundPort": outbound,
                     "ports": [{"name": "http", "port": port, "targetPort": target}]}}


def service(name: str, ns: str = NS, **selector: str) -> dict[str, Any]:
    """A Service on port 80 targeting the workloads' `http` port."""
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"selector": selector,
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


def route(name: str, *rules: tuple[str, str], parent: str = "api", ns: str = NS) -> dict[str, Any]:
    """An HTTPRoute on Service `parent`, one rule per (path prefix, backend Service).  Once a
    route is attached, requests no rule matches get 404 (GAMMA)."""
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": parent, "port": 80}],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                                "backendRefs": [{"name": backend, "port": 80}]}
                               for prefix, backend in rules]}}


def permissive_mesh() -> dict[str, Any]:
    """The Mesh with mTLS PERMISSIVE: for tests whose client is outside the mesh (it calls a
    proxy's inbound port itself, with no sidecar of its own), which STRICT — the default —
    refuses (ADR 0033).  Sidecars still talk mTLS to each other."""
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
            "metadata": {"name": "default"}, "spec": {"mtls": {"mode": "PERMISSIVE"}}}


def scale_address(i: int) -> str:
    """The loopback address of workload `w-<i>` of `scale_mesh` (250 per /24)."""
    return f"127.1.{i // 250}.{i % 250 + 1}"


def scale_route(i: int, backend: int, ns: str = NS, sticky: bool = False) -> dict[str, Any]:
    """`r-<i>`: `/v1` of Service `svc-<i>` to `svc-<backend>` (with session persistence when
    `sticky`)."""
    rule: dict[str, Any] = {"matches": [{"path": {"type": "PathPrefix", "value": "/v1"}}],
                            "backendRefs": [{"name": f"svc-{backend}", "port": 80}]}
    if sticky:
        rule["sessionPersistence"] = {"sessionName": "sid"}
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": f"r-{i}", "namespace": ns},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": f"svc-{i}",
                                     "port": 80}], "rules": [rule]}}


def scale_mesh(n: int, ns: str = NS) -> list[dict[str, Any]]:
    """`n` Services `svc-<i>`, each with a workload `w-<i>` and an HTTPRoute `r-<i>`: every
    proxy's snapshot holds all of them (~1.4 KB each on the wire).  What the control plane's
    scale tests load."""
    docs: list[dict[str, Any]] = []
    for i in range(n):
        docs += [
            {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Service",
             "metadata": {"name": f"svc-{i}", "namespace": ns},
             "spec": {"selector": {"app": f"svc-{i}"},
                      "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}},
            {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
             "metadata": {"name": f"w-{i}", "namespace": ns, "labels": {"app": f"svc-{i}"}},
             "spec": {"address": scale_address(i),
                      "ports": [{"name": "http", "port": 8080, "targetPort": 18080}]}},
            scale_route(i, i, ns)]
    return docs
