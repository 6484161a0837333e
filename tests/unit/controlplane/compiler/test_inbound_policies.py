"""Server-side limits compiled into snapshots: a port serving two Services shares one global
counter key between them (and with every replica), and a long list of Services is digested."""

from __future__ import annotations

from typing import Any

from tulle.controlplane.compiler import MeshInputs, compile_mesh

V1 = "mesh.tulle.dev/v1alpha1"


def workload(name: str) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "Workload",
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"address": "127.0.0.1", "ports": [{"name": "http", "port": 18080}]}}


def service(name: str) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


LIMIT = {"apiVersion": "policy.tulle.dev/v1alpha1", "kind": "RateLimitPolicy",
         "metadata": {"name": "ns-limit", "namespace": "shop"},
         "spec": {"targetRef": {"group": "", "kind": "Namespace", "name": "shop"},
                  "global": {"requests": 10, "interval": "1s", "redis": "127.0.0.1:6379"}}}


def keys(resources: list[dict[str, Any]]) -> set[str]:
    result = compile_mesh(MeshInputs.from_resources(resources))
    assert result.errors == {}
    out = set()
    for cfg in result.snapshots.values():
        for table in cfg.route_tables:
            for vh in table.virtual_hosts:
                for rule in vh.rules:
                    for f in rule.filters:
                        g = getattr(f, "global_", None)
                        if g is not None:
                            out.add(g.key)
    return out


def test_replicas_of_two_services_share_one_key() -> None:
    got = keys([workload("web-0"), workload("web-1"), service("a"), service("b"), LIMIT])
    assert got == {"shop/ns-limit|shop/a+shop/b"}


def test_many_services_are_digested_into_a_valid_key() -> None:
    many = [service(f"service-with-a-long-name-{i:02d}") for i in range(20)]
    (key,) = keys([workload("web-0"), *many, LIMIT])
    assert key.startswith("shop/ns-limit|") and len(key) < 100
