"""RetryPolicy and TimeoutPolicy through the control plane and the CLI: applied, enforced,
and `tulle describe service` says which policy set each value (ADR 0037, ADR 0039)."""

from __future__ import annotations

from typing import Any

import aiohttp
import yaml
from tests.support.cli import tulle
from tests.support.controlplane import auth, eventually, running_control_plane

SERVICE = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Service",
           "metadata": {"name": "web", "namespace": "shop"},
           "spec": {"selector": {"app": "web"},
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
RETRY = {"apiVersion": "policy.tulle.dev/v1alpha1", "kind": "RetryPolicy",
         "metadata": {"name": "web-retries", "namespace": "shop"},
         "spec": {"targetRef": {"group": "", "kind": "Service", "name": "web"}, "attempts": 3,
                  "budget": {"percent": 10}}}
TIMEOUT = {"apiVersion": "policy.tulle.dev/v1alpha1", "kind": "TimeoutPolicy",
           "metadata": {"name": "web-timeouts", "namespace": "shop"},
           "spec": {"targetRef": {"group": "", "kind": "Service", "name": "web"},
                    "requestTimeout": "3s", "connectTimeout": "200ms"}}


async def status(api: str, type_: str, name: str) -> Any:
    async with aiohttp.ClientSession(headers=auth(api)) as s, \
            s.get(f"{api}/api/v1/resources/{type_}/{name}", params={"namespace": "shop"}) as r:
        assert r.status == 200, await r.text()
        return (await r.json()).get("status") or {}


async def test_policies_are_enforced_and_describe_names_who_set_each_value() -> None:
    async with running_control_plane() as cp:
        api = cp.api_url
        code, out, err = await tulle(api, "apply", "--strict", "-f", "-",
                                     stdin=yaml.safe_dump_all([SERVICE, RETRY, TIMEOUT]))
        assert code == 0, err  # strict: nothing is stored but not enforced

        async def written() -> bool:
            svc = await status(api, "service", "web")
            types = {c["type"] for c in svc.get("conditions") or []}
            return {"RetriesApplied", "TimeoutsApplied"} <= types

        await eventually(written)
        for kind, name in (("retrypolicy", "web-retries"), ("timeoutpolicy", "web-timeouts")):
            conds = (await status(api, kind, name))["conditions"]
            assert [(c["type"], c["status"], c["reason"]) for c in conds] == [
                ("Accepted", "True", "Enforced")]
        code, out, _ = await tulle(api, "describe", "service", "web", "-n", "shop")
        assert code == 0
        assert ("RetriesApplied=True (Applied): port 80: attempts, budget from RetryPolicy "
                "shop/web-retries") in out, out
        assert ("TimeoutsApplied=True (Applied): port 80: requestTimeout, connectTimeout from "
                "TimeoutPolicy shop/web-timeouts") in out, out
