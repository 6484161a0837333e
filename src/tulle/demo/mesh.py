"""What the demo runs, as data: its pods and the resources it applies.

    load-0 ─▶ web ─┬─▶ catalog (HTTPRoute catalog-canary: 90 catalog-v1 / 10 catalog-v2)
                   ├─▶ inventory (gRPC, :50051)
                   └─▶ flaky (answers 503 to 30%; RetryPolicy flaky-retries hides it)

AuthorizationPolicy catalog-callers lets only web's identity call the catalog.

node-1 runs every pod but catalog-v2-0 and flaky-0 with a sidecar each (`tulle iptables
apply` in the pod); node-2 runs those two behind ONE node agent (`interception: agent`,
ADR 0047).  Neither of node-2's pods calls anything, and nothing on node-2 calls them: the
agent cannot yet carry a call between two pods it serves.  STRICT mTLS and REGISTRY_ONLY
mesh-wide.  The load generator has a sidecar too, so every hop is mTLS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

NAMESPACE: Final = "shop"
TRUST_DOMAIN: Final = "demo.tulle.local"
APP_PORT: Final = 8080
GRPC_PORT: Final = 50051
VIP_CIDR: Final = "240.240.0.0/16"
"""The control plane's virtual-IP range (controlplane/vips.py VIP_RANGE)."""
FLAKY_SHARE: Final = 0.3
SUFFIX: Final = f".{NAMESPACE}.svc.cluster.local"


@dataclass(frozen=True, slots=True)
class Pod:
    """One pod: its workload, where it runs and which program it is."""

    name: str
    address: str
    node: str
    """`node-1` (sidecars) or `node-2` (the agent)."""
    labels: dict[str, str]
    argv: tuple[str, ...]
    """`python -m tulle.demo.apps` arguments."""
    port: int | None = APP_PORT
    agent_ports: tuple[int, int] | None = None
    """(outboundPort, inboundPort) on the node agent; None: a sidecar."""
    account: str = ""

    @property
    def service_account(self) -> str:
        return self.account or self.labels["app"]


def pods(rps: float) -> list[Pod]:
    return [
        Pod("web-0", "10.232.1.2", "node-1", {"app": "web"},
            ("web", str(APP_PORT), f"http://catalog{SUFFIX}", f"http://flaky{SUFFIX}/price",
             f"inventory{SUFFIX}:{GRPC_PORT}")),
        Pod("catalog-v1-0", "10.232.1.3", "node-1", {"app": "catalog", "version": "v1"},
            ("catalog", str(APP_PORT), "v1")),
        Pod("inventory-0", "10.232.1.4", "node-1", {"app": "inventory"},
            ("inventory", str(GRPC_PORT)), port=GRPC_PORT),
        Pod("load-0", "10.232.1.5", "node-1", {"app": "load"},
            ("load", f"http://web{SUFFIX}/", f"{rps:g}"), port=None),
        Pod("catalog-v2-0", "10.232.2.2", "node-2", {"app": "catalog", "version": "v2"},
            ("catalog", str(APP_PORT), "v2"), agent_ports=(15001, 15101)),
        Pod("flaky-0", "10.232.2.3", "node-2", {"app": "flaky"},
            ("flaky", str(APP_PORT), f"{FLAKY_SHARE:g}"), agent_ports=(15002, 15102)),
    ]


def workload(pod: Pod) -> dict[str, Any]:
    spec: dict[str, Any] = {"address": pod.address, "serviceAccount": pod.service_account,
                            "interception": "transparent",
                            "ports": [{"port": pod.port}] if pod.port else []}
    if pod.agent_ports is not None:
        spec |= {"interception": "agent", "outboundPort": pod.agent_ports[0],
                 "inboundPort": pod.agent_ports[1]}
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": pod.name, "namespace": NAMESPACE, "labels": pod.labels},
            "spec": spec}


def service(name: str, selector: dict[str, str], port: int = 80, target: int = APP_PORT,
            protocol: str = "http") -> dict[str, Any]:
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Service",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"selector": selector, "ports": [
                {"name": protocol, "port": port, "targetPort": target, "appProtocol": protocol}]}}


def canary(v1: int, v2: int) -> dict[str, Any]:
    """The HTTPRoute splitting `catalog` between its versions (`tulle demo` prints how to
    change it)."""
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "catalog-canary", "namespace": NAMESPACE},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "catalog",
                                     "port": 80}],
                     "rules": [{"backendRefs": [
                         {"name": "catalog-v1", "port": 80, "weight": v1},
                         {"name": "catalog-v2", "port": 80, "weight": v2}]}]}}


def resources(rps: float) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh", "metadata": {"name": "default"},
         "spec": {"trustDomain": TRUST_DOMAIN, "mtls": {"mode": "STRICT"},
                  "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}},
        *(workload(p) for p in pods(rps)),
        service("web", {"app": "web"}),
        service("catalog", {"app": "catalog"}),
        service("catalog-v1", {"app": "catalog", "version": "v1"}),
        service("catalog-v2", {"app": "catalog", "version": "v2"}),
        service("inventory", {"app": "inventory"}, GRPC_PORT, GRPC_PORT, "grpc"),
        service("flaky", {"app": "flaky"}),
        canary(90, 10),
        # Zero trust: only web's identity may call the catalog (both versions, both modes).
        {"apiVersion": "policy.tulle.dev/v1alpha1", "kind": "AuthorizationPolicy",
         "metadata": {"name": "catalog-callers", "namespace": NAMESPACE},
         "spec": {"targetRef": {"group": "", "kind": "Service", "name": "catalog"},
                  "action": "ALLOW",
                  "rules": [{"from": [{"serviceAccounts": [f"{NAMESPACE}/web"]}],
                             "to": [{"methods": ["GET"], "paths": ["/items/*"]}]}]}},
        {"apiVersion": "policy.tulle.dev/v1alpha1", "kind": "RetryPolicy",
         "metadata": {"name": "flaky-retries", "namespace": NAMESPACE},
         "spec": {"targetRef": {"group": "", "kind": "Service", "name": "flaky"},
                  "attempts": 5, "retryOn": ["5xx", "connect-failure", "reset"],
                  "backoff": {"baseInterval": "5ms", "maxInterval": "50ms"},
                  "budget": {"percent": 100, "minRetriesPerSecond": 50}}},
    ]
