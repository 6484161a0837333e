"""RateLimitPolicy and FaultInjectionPolicy end to end: resources over the REST API, compiled
by the control plane, enforced by a real proxy on its workload's inbound side; the Service's
status names who set each value and the policies say they are enforced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
from tests.integration.controlplane.test_authorization import MESH_TARGET, Mesh, mesh
from tests.support.controlplane import auth, eventually

POLICY = "policy.tulle.dev/v1alpha1"
SERVICE = {"group": "", "kind": "Service", "name": "api"}


def doc(kind: str, name: str, spec: dict[str, Any], ns: str = "shop") -> dict[str, Any]:
    return {"apiVersion": POLICY, "kind": kind, "metadata": {"name": name, "namespace": ns},
            "spec": spec}


async def resource(m: Mesh, path: str, ns: str = "shop") -> dict[str, Any]:
    async with aiohttp.ClientSession(headers=auth(m.api)) as s, s.get(
            f"{m.api}/api/v1/resources/{path}", params={"namespace": ns}) as r:
        assert r.status == 200
        return await r.json()  # type: ignore[no-any-return]


def conditions(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


async def test_limits_and_faults_applied_through_the_control_plane(tmp_path: Path) -> None:
    async with mesh(tmp_path) as m:
        await m.enforce(doc("FaultInjectionPolicy", "api-chaos",
                            {"targetRef": SERVICE, "abort": {"httpStatus": 418, "percent": 100},
                             "match": {"headers": [{"name": "x-chaos", "value": "on"}]}}))

        async def chaos() -> int:
            async with m.session.get(f"http://127.0.0.1:{m.http}/",
                                     headers={"Host": "api", "x-chaos": "on"}) as r:
                return r.status

        async def aborted() -> bool:
            return await chaos() == 418
        await eventually(aborted, timeout=10)
        assert (await m.get("/"))[0] == 200  # without the header: no fault
        await m.enforce(
            doc("RateLimitPolicy", "api-limit",
                {"targetRef": SERVICE, "local": {"requests": 4, "interval": "1m"}}),
            doc("RateLimitPolicy", "mesh-tcp",
                {"targetRef": MESH_TARGET, "tcp": {"connections": 1, "interval": "1m"}},
                ns="mesh-system"),
            doc("FaultInjectionPolicy", "api-chaos",
                {"targetRef": SERVICE, "abort": {"httpStatus": 418, "percent": 100},
                 "match": {"headers": [{"name": "x-chaos", "value": "on"}]}}))

        async def limited() -> bool:
            return (await m.get("/"))[0] == 429
        await eventually(limited, timeout=10)  # the snapshot with the limit is in force
        status, body = await m.get("/")
        assert (status, body) == (429, "rate limited\n")

        # The TCP port: the Mesh's connection rate (one per minute) lets one through.
        assert await m.tcp_roundtrip() == b"ping"
        assert await m.tcp_roundtrip() == b""

        async def described() -> bool:  # the status write may trail the compilation
            return "FaultInjection" in conditions(await resource(m, "services/api"))
        await eventually(described, timeout=10)
        conds = conditions(await resource(m, "services/api"))
        assert conds["RateLimits"]["message"] == (
            "local=4/1m by Route (RateLimitPolicy shop/api-limit); global=none (default); "
            "tcp=1 connections/1m (RateLimitPolicy mesh-system/mesh-tcp)")
        assert "abort=HTTP 418 for 100% (FaultInjectionPolicy shop/api-chaos)" in \
            conds["FaultInjection"]["message"]
        for path in ("ratelimitpolicies/api-limit", "faultinjectionpolicies/api-chaos"):
            accepted = conditions(await resource(m, path))["Accepted"]
            assert accepted["status"] == "True" and accepted["reason"] == "Enforced", accepted
        text = m.server.metrics.registry.render()
        assert 'tulle_proxy_rate_limited_total{listener="inbound|' in text
