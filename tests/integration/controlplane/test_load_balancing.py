"""LoadBalancingPolicy through the real CLI and control plane: `describe service` shows each
balancer value and the policy (or default) that set it; deleting the policy takes its name
off; a bad policy is refused with its path at apply."""

from __future__ import annotations

from typing import Any

import yaml
from tests.integration.controlplane.test_cli_routing import get_json, service
from tests.support.cli import tulle
from tests.support.controlplane import eventually, running_control_plane

POLICY: dict[str, Any] = {
    "apiVersion": "policy.tulle.dev/v1alpha1", "kind": "LoadBalancingPolicy",
    "metadata": {"name": "sticky", "namespace": "shop"},
    "spec": {"targetRef": {"group": "", "kind": "Service", "name": "web"}, "type": "RingHash",
             "hashPolicies": [{"type": "Cookie", "name": "session"}]}}


def docs(*objs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(list(objs), sort_keys=False)


async def _lb_condition(api: str) -> str:
    conds = ((await get_json(api, "service", "web")).get("status") or {}).get(
        "conditions") or []
    return next((c["message"] for c in conds if c["type"] == "LoadBalancing"), "")


async def test_describe_shows_who_set_each_value_and_forgets_a_deleted_policy() -> None:
    async with running_control_plane() as cp:
        api = cp.api_url
        code, out, err = await tulle(api, "apply", "-f", "-", stdin=docs(service("web"), POLICY))
        assert code == 0, (out, err)
        assert "LoadBalancingPolicy" not in err  # enforced: no "not enforced" warning

        async def by_policy() -> bool:
            return "LoadBalancingPolicy shop/sticky" in await _lb_condition(api)

        await eventually(by_policy)
        code, out, _ = await tulle(api, "describe", "service", "web", "-n", "shop")
        assert code == 0
        line = next(x for x in out.splitlines() if "LoadBalancing" in x)
        assert 'lb_policy="ring_hash" (LoadBalancingPolicy shop/sticky)' in line, line
        assert "hash_policies=" in line and '"session"' in line, line
        code, out, _ = await tulle(api, "describe", "loadbalancingpolicy", "sticky", "-n", "shop")
        assert code == 0 and "Accepted=True" in out and "sets hashPolicies, type" in out, out

        code, _, err = await tulle(api, "delete", "lbp", "sticky", "-n", "shop")
        assert code == 0, err

        async def default_again() -> bool:
            return '"peak_ewma" (default)' in await _lb_condition(api)

        await eventually(default_again)


async def test_a_policy_that_contradicts_itself_is_refused_with_its_path() -> None:
    bad = {**POLICY, "spec": {**POLICY["spec"], "type": "RoundRobin"}}
    async with running_control_plane() as cp:
        code, _, err = await tulle(cp.api_url, "apply", "-f", "-", stdin=docs(bad))
        assert code == 1
        assert "spec.hashPolicies: type RoundRobin does not hash" in err, err
