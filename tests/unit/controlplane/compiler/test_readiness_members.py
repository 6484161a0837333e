"""A workload out of its Services' endpoints by readiness (ADR 0040: its proxy starting,
draining or gone) is still their member for its own inbound side (ADR 0116).

Its own snapshot is compiled while it is out -- a starting sidecar's first one always is, since
it joins at its first ACK -- and it serves that snapshot the moment it joins.  Before, being out
took it out of `ServicePort.endpoints`, which is also where the mTLS mode, the Service-targeted
AuthorizationPolicies and the declared protocol of its inbound ports are read from: its first
config bound no Service policy (found by `test_zt_audit`'s foreign trust domain client being
relayed under `serviceAccounts: [shop/dbc]`)."""

from __future__ import annotations

from typing import Any

import msgspec
from tests.unit.controlplane.compiler.plugins.test_authorization import _policy, _rpc_raw_admin

from tulle.controlplane.compiler import MeshInputs, compile_mesh

V1 = "mesh.tulle.dev/v1alpha1"
CLIENT = {"apiVersion": V1, "kind": "Workload",
          "metadata": {"name": "web-0", "namespace": "shop", "labels": {"app": "web"}},
          "spec": {"address": "127.0.0.2"}}


def _with_proxy(docs: list[dict[str, Any]], state: str, reason: str) -> list[dict[str, Any]]:
    return [{**d, "status": {"proxy": {"state": state, "reason": reason, "session": "s1"}}}
            if d["metadata"]["name"] == "rpc-0" else d for d in docs]


def _compiled(docs: list[dict[str, Any]]) -> dict[str, Any]:
    result = compile_mesh(MeshInputs.from_resources(docs))
    assert result.errors == {}
    return {name: msgspec.to_builtins(cfg) for (_, name), cfg in result.snapshots.items()}


def test_a_starting_workload_is_sent_the_inbound_side_it_will_serve() -> None:
    docs = [*_rpc_raw_admin(), CLIENT,
            _policy("rpc-only-web", "rpc", action="ALLOW",
                    rules=[{"from": [{"serviceAccounts": ["shop/web"]}]}])]
    serving = _compiled(_with_proxy(docs, "Connected", "connected"))
    starting = _compiled(_with_proxy(docs, "Disconnected",
                                     "starting: waiting for the proxy to apply its first config"))
    assert "rpc-only-web" in msgspec.json.encode(serving["rpc-0"]["route_tables"]).decode()
    for section in ("listeners", "route_tables"):
        assert starting["rpc-0"][section] == serving["rpc-0"][section], section

    # ...while its clients do not call it until it serves.
    def endpoints(cfg: dict[str, Any]) -> list[Any]:
        return [e for c in cfg["clusters"] if "rpc" in c["name"] and not c.get("workload")
                for e in c.get("endpoints", [])]

    assert endpoints(serving["web-0"]) and not endpoints(starting["web-0"])
