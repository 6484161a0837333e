"""Golden metrics end to end (ADR 0053): a real control plane compiles
`Mesh.spec.observability.metrics` into real proxies' snapshots; requests between them over the
mTLS the control plane set up are labelled with the workloads, apps and identities the mesh
knows, on both sides; a workload joining the mesh reaches every proxy's identity table; the
Mesh turns the metrics off."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.integration.controlplane.test_mtls import (
    NS,
    V1,
    _answers,
    running_mesh,
    workload,
)
from tests.support.controlplane import SubscribedProxy, eventually

API_ID = "spiffe://cluster.local/ns/shop/sa/api"


def mesh_doc(**metrics: Any) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "Mesh", "metadata": {"name": "default"},
            "spec": {"observability": {"metrics": metrics}}}


def metric(p: SubscribedProxy, name: str, **labels: str) -> float:
    total = 0.0
    for line in p.server.metrics.registry.render().splitlines():
        if line.startswith(name + "{"):
            series, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
    return total


async def test_both_sides_name_the_mesh_workloads_and_the_mesh_turns_them_off(
        tmp_path: Path) -> None:
    async with running_mesh(tmp_path, mesh_doc(clusterName="test"), clients=("a", "b")) as m:
        await eventually(lambda: _answers(m, "a"), timeout=15)
        await eventually(lambda: _answers(m, "b"), timeout=15)
        dest = {"reporter": "destination", "destination_workload": "api-0",
                "destination_app": "api", "destination_principal": API_ID,
                "destination_service": "api.shop.svc.cluster.local",
                "destination_cluster": "test", "connection_security_policy": "mutual_tls",
                "response_code": "200"}
        for sa in ("a", "b"):
            assert metric(m.server, "istio_requests_total", source_workload=f"{sa}-0",
                          source_app=f"client-{sa}", source_workload_namespace=NS,
                          source_principal=f"spiffe://cluster.local/ns/shop/sa/{sa}",
                          **dest) >= 1
        client = m.clients["a"][0]
        assert metric(client, "istio_requests_total", reporter="source", source_workload="a-0",
                      destination_service_name="api", destination_workload="api-0",
                      destination_principal=API_ID, source_cluster="test") >= 1

        # A workload with its own identity joins: every proxy's table learns it.
        await m.enforce(workload("c-0", "c", "127.0.0.30", [], outbound=0, app="client-c"))

        def knows_c() -> bool:
            cfg = m.server.server.config
            metrics = cfg.telemetry.metrics if cfg is not None else None
            return metrics is not None and any(
                p.principal == "spiffe://cluster.local/ns/shop/sa/c" and p.workload == "c-0"
                for p in metrics.peers)

        await eventually(knows_c, timeout=15)

        # The Mesh turns them off: the next snapshot has no section, requests go uncounted.
        await m.enforce(mesh_doc(enabled=False))
        await eventually(lambda: m.server.server.config is not None
                         and m.server.server.config.telemetry.metrics is None, timeout=15)
        before = metric(m.server, "istio_requests_total")
        assert (await m.call("a"))[0] == 200
        assert metric(m.server, "istio_requests_total") == before
