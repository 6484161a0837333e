"""`tulle describe service` names who set each resilience value, for every Issue-10 kind at
once (ADR 0037): LoadBalancing, Retries, Timeouts, OutlierDetection and HealthCheck
(`EndpointHealth`), CircuitBreaker — from a Service policy, a Namespace policy, the Mesh
defaults or the built-in default; through the real CLI and control plane."""

from __future__ import annotations

from typing import Any

import yaml
from tests.integration.controlplane.test_cli_retries import SERVICE, status
from tests.support.cli import tulle
from tests.support.controlplane import eventually, running_control_plane

TYPES = {"LoadBalancing", "RetriesApplied", "TimeoutsApplied", "EndpointHealth",
         "CircuitBreaker"}


def policy(kind: str, name: str, target: str, **spec: Any) -> dict[str, Any]:
    ref = ({"group": "", "kind": "Namespace", "name": "shop"} if target == "Namespace"
           else {"group": "", "kind": "Service", "name": "web"})
    return {"apiVersion": "policy.tulle.dev/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"targetRef": ref, **spec}}


MESH = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
        "metadata": {"name": "default"},
        "spec": {"defaults": {"circuitBreaker": {"maxRetries": 1}}}}
POLICIES = [
    policy("LoadBalancingPolicy", "lb", "Service", type="LeastRequest"),
    policy("RetryPolicy", "ns-retries", "Namespace", attempts=2),
    policy("TimeoutPolicy", "ns-timeouts", "Namespace", requestTimeout="4s"),
    policy("OutlierDetectionPolicy", "od", "Namespace", consecutive5xx=3),
    policy("HealthCheckPolicy", "hc", "Service", tcp={}),
    policy("CircuitBreakerPolicy", "cb", "Service", maxRequests=50),
]


async def test_describe_names_the_source_of_every_resilience_value() -> None:
    async with running_control_plane() as cp:
        api = cp.api_url
        code, _, err = await tulle(api, "apply", "--strict", "-f", "-",
                                   stdin=yaml.safe_dump_all([MESH, SERVICE, *POLICIES]))
        assert code == 0, err  # strict: every kind is enforced

        async def written() -> bool:
            svc = await status(api, "service", "web")
            return {c["type"] for c in svc.get("conditions") or []} >= TYPES

        await eventually(written)
        code, out, _ = await tulle(api, "describe", "service", "web", "-n", "shop")
        assert code == 0
        lines = {t: next((x for x in out.splitlines() if x.strip().startswith(t)), "")
                 for t in TYPES}
        assert '"least_request" (LoadBalancingPolicy shop/lb)' in lines["LoadBalancing"], out
        assert "attempts from RetryPolicy shop/ns-retries" in lines["RetriesApplied"], out
        assert "requestTimeout from TimeoutPolicy shop/ns-timeouts" in lines["TimeoutsApplied"]
        health = lines["EndpointHealth"]
        assert "outlierDetection.consecutive5xx=3 (OutlierDetectionPolicy shop/od)" in health
        assert "healthCheck.probe=tcp (HealthCheckPolicy shop/hc)" in health, health
        cb = lines["CircuitBreaker"]
        assert "maxRequests=50 (CircuitBreakerPolicy shop/cb)" in cb, cb
        assert "maxRetries=1 (Mesh.spec.defaults)" in cb and "maxConnections=1024 (default)" in cb
        for kind, name in (("retrypolicy", "ns-retries"), ("timeoutpolicy", "ns-timeouts"),
                           ("circuitbreakerpolicy", "cb"), ("outlierdetectionpolicy", "od")):
            conds = (await status(api, kind, name))["conditions"]
            assert [(c["type"], c["status"], c["reason"]) for c in conds] == [
                ("Accepted", "True", "Enforced")], (kind, conds)
