"""What the circuit_breaker plugin's values become in a caller's snapshot: the Service
cluster's `limits`, only the fields a level sets, as the proxy validates them; nothing at all
without a policy or Mesh default (the proxy's own 1024 / 1024 / 1024 / 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tulle.controlplane.compiler import MeshInputs, compile_mesh

CASES = Path(__file__).parent / "testdata" / "circuit_breaker"
CALLER = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
          "metadata": {"name": "web-0", "namespace": "shop", "labels": {"app": "web"}},
          "spec": {"address": "127.0.0.2", "ports": [{"name": "http", "port": 18081,
                                                      "targetPort": 8081}]}}


def _clusters(docs: list[dict[str, Any]]) -> dict[str, Any]:
    result = compile_mesh(MeshInputs.from_resources(docs))
    assert not result.errors
    return {c.name: c for c in result.snapshots[("shop", "web-0")].clusters}


def test_a_caller_gets_the_merged_limits() -> None:
    docs = [d for d in yaml.safe_load_all((CASES / "precedence.yaml").read_text()) if d]
    by_name = _clusters([*docs, CALLER])
    api = by_name["outbound|80||api.shop"].limits
    assert api is not None
    assert (api.max_connections, api.max_pending_requests, api.max_requests,
            api.max_retries) == (1024, 0, 10, 1)
    quiet = by_name["outbound|80||quiet.other"].limits
    assert quiet is not None and (quiet.max_pending_requests, quiet.max_retries) == (7, 1)


def test_without_a_policy_the_cluster_has_no_limits_of_its_own() -> None:
    docs = [d for d in yaml.safe_load_all((CASES / "precedence.yaml").read_text())
            if d and d["kind"] not in ("Mesh", "CircuitBreakerPolicy")]
    assert _clusters([*docs, CALLER])["outbound|80||api.shop"].limits is None
