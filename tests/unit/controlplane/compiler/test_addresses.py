"""Two Workloads claiming one address and port (compiler/addresses.py): the later one by
namespace/name is told, however the address is written; loopback and other ports are fine."""

from __future__ import annotations

from typing import Any

from tulle.controlplane.compiler import MeshInputs, derive


def workload(name: str, address: str, *ports: int, more: list[str] | None = None,
             status: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
                           "metadata": {"name": name, "namespace": "shop", "generation": 3},
                           "spec": {"address": address, "ports": [{"port": p} for p in ports]}}
    if more:
        doc["spec"]["additionalAddresses"] = more
    if status:
        doc["status"] = status
    return doc


def conditions(*docs: dict[str, Any]) -> dict[str, list[tuple[str, bool, str, str]]]:
    mesh = derive(MeshInputs.from_resources(list(docs)))
    return {ref[2]: [(c.type, c.status, c.reason, c.message) for c in conds]
            for ref, conds in mesh.conditions.items() if ref[0] == "Workload"}


def test_the_later_workload_on_a_claimed_address_and_port_is_told() -> None:
    got = conditions(workload("a-0", "10.0.0.3", 8080),
                     workload("b-0", "10.0.0.9", 8080, more=["FD00::3"]),
                     workload("c-0", "10.0.0.7", 8080, more=["fd00:0::3"]),  # b-0's, respelled
                     workload("d-0", "10.0.0.3", 8080, 9090))
    assert sorted(got) == ["c-0", "d-0"]
    [(kind, ok, reason, message)] = got["c-0"]
    assert (kind, ok, reason) == ("AddressUnique", False, "AddressConflict")
    assert message.startswith("[fd00::3]:8080 is shop/b-0's: ")
    assert got["d-0"][0][3].startswith("10.0.0.3:8080 is shop/a-0's: ")  # 9090 is its own


def test_loopback_workloads_and_distinct_ports_are_fine_and_a_stale_condition_is_cleared() -> None:
    stale = {"conditions": [{"type": "AddressUnique", "status": "False"}]}
    got = conditions(workload("a-0", "127.0.0.1", 8080), workload("b-0", "127.0.0.1", 8080),
                     workload("c-0", "10.0.0.3", 8080), workload("d-0", "10.0.0.3", 9090,
                                                                 status=stale))
    assert got == {"d-0": []}
