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
