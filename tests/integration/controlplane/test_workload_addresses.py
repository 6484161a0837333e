"""Two Workloads claiming one address and port, end to end (compiler/addresses.py): the later
one's `apply` warns, its stored status says so, and the condition goes once the conflict is
gone."""

from __future__ import annotations

from typing import Any

from tests.support.controlplane import apply, eventually, running_control_plane

NS = "shop"


async def test_a_workload_claiming_anothers_address_is_told_at_apply_and_in_status() -> None:
    """Both reviews of ADR 0088: two Workloads on one address and port were resolved by
    namespace/name order with nothing said.  The later one's `apply` warns, its status says
    so, and the condition goes once the address is its own."""
    def wl(name: str, address: str) -> dict[str, Any]:
        return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"address": "10.3.0.1", "additionalAddresses": [address],
                         "ports": [{"port": 8080}]} if name == "a-0" else
                {"address": address, "ports": [{"port": 8080}]}}

    async with running_control_plane() as cp:
        assert (await apply(cp.api_url, wl("a-0", "fd00:3::1")))[0] == 200
        status, body = await apply(cp.api_url, wl("b-0", "FD00:3:0::1"))
        assert status == 200, body
        [res] = body["results"]
        assert any("AddressUnique" in w and "[fd00:3::1]:8080 is shop/a-0's" in w
                   for w in res.get("warnings") or []), res

        async def conds() -> list[dict[str, Any]]:
            obj = await cp.store.get("Workload", NS, "b-0")
            return list((obj.get("status") or {}).get("conditions") or [])

        async def told() -> bool:
            return any(c.get("type") == "AddressUnique" and c.get("status") == "False"
                       for c in await conds())

        await eventually(told, timeout=10)
        assert (await apply(cp.api_url, wl("b-0", "fd00:3::2")))[0] == 200

        async def cleared() -> bool:
            return not any(c.get("type") == "AddressUnique" for c in await conds())

        await eventually(cleared, timeout=10)
