"""The demo's resources: valid as the API reads them, and shaped as the demo promises."""

from __future__ import annotations

import yaml

from tulle.api import io
from tulle.demo import mesh


def test_every_resource_is_valid() -> None:
    loaded = io.load_text(yaml.safe_dump_all(mesh.resources(20)))
    assert [d.errors for d in loaded.documents if d.errors] == []
    kinds = [d.resource.kind for d in loaded.documents if d.resource is not None]
    assert kinds.count("Service") >= 4 and "HTTPRoute" in kinds and "RetryPolicy" in kinds


def test_strict_mtls_a_90_10_canary_and_a_grpc_service() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in mesh.resources(20)}
    assert docs[("Mesh", "default")]["spec"]["mtls"]["mode"] == "STRICT"
    weights = [b["weight"] for b in docs[("HTTPRoute", "catalog-canary")]["spec"]["rules"][0]
               ["backendRefs"]]
    assert weights == [90, 10]
    assert docs[("Service", "inventory")]["spec"]["ports"][0]["appProtocol"] == "grpc"
    authz = docs[("AuthorizationPolicy", "catalog-callers")]["spec"]
    assert authz["targetRef"]["name"] == "catalog" and authz["action"] == "ALLOW"
    assert authz["rules"][0]["from"] == [{"serviceAccounts": ["shop/web"]}]


def test_one_agent_serves_two_pods_that_neither_call_nor_are_called_from_its_node() -> None:
    """ADR 0047: an agent cannot carry a call between two pods it serves."""
    pods = mesh.pods(20)
    agent = [p for p in pods if p.agent_ports is not None]
    assert len(agent) == 2 and {p.node for p in agent} == {"node-2"}
    assert all(p.node == "node-1" for p in pods if p.agent_ports is None)
    assert len({port for p in agent for port in p.agent_ports or ()}) == 4
    # The agent's pods are servers only: their programs take no service URL.
    assert all("svc.cluster.local" not in " ".join(p.argv) for p in agent)
    workloads = {w["metadata"]["name"]: w["spec"] for w in map(mesh.workload, pods)}
    assert {n for n, s in workloads.items() if s["interception"] == "agent"} == \
        {p.name for p in agent}


def test_the_load_generator_rate_is_passed_on() -> None:
    load = next(p for p in mesh.pods(7.5) if p.name == "load-0")
    assert load.argv[-1] == "7.5" and load.port is None
