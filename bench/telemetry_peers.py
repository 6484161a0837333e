"""The telemetry row (issue 12's budget): the same Tulle with its observability on and off.

"Metrics, access logs and tracing on (sampling 1%) cost at most +15% CPU per request against
the same proxy with them off, measured in the same run" -> `ratios.telemetry_on_vs_off` in
bench/results/full.json (`tulle-telemetry` vs `tulle`, HTTP/1.1 rounds, which rotate the
peers round by round so a busy neighbour disturbs both alike).

What "on" means is whatever `OBSERVABILITY` turns on, written as a `Mesh.spec.observability`
and compiled by the real compiler into the proxy's `telemetry` section, so a signal added to
the Mesh (access logs, tracing at 1%) is priced here by adding it to `OBSERVABILITY`: today
the golden metrics (ADR 0053), access logs of every request (ADR 0054) and tracing at 1%
(ADR 0055).  The baseline `tulle` peer has no `telemetry` section.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

from bench.peers import PROXY_CPU, Running, Skip, tulle_cmd, tulle_config
from bench.procs import ProcessSet, free_port, tree, wait_port

OBSERVABILITY: dict[str, Any] = {
    "metrics": {"enabled": True},
    "accessLog": {"sink": {"type": "file", "path": "/dev/null"}},  # every request, JSON
    "tracing": {"sampling": 1},  # 1%, propagation and spans (no collector: none exported)
}
"""`Mesh.spec.observability` of the `tulle-telemetry` peer (what the budget prices): the
issue's "metrics, access logs and tracing on (sampling 1%)"."""


def telemetry_section(observability: dict[str, Any] | None = None) -> dict[str, Any]:
    """The proxy `telemetry` section the compiler makes of `observability` for a workload
    named like the bench's proxy (with its mesh identity and the mesh's peers)."""
    from tulle.api.mesh import Mesh
    from tulle.controlplane.compiler import MeshInputs, compile_mesh

    mesh = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
            "metadata": {"name": "default"},
            "spec": {"observability": observability or OBSERVABILITY}}
    Mesh.model_validate(mesh)
    workloads = [{"kind": "Workload", "metadata": {"name": name, "namespace": "bench",
                                                    "labels": {"app": name, "version": "v1"}},
                  "spec": {"address": "127.0.0.1", "serviceAccount": name,
                           "ports": [{"name": "http", "port": 18000 + i,
                                      "targetPort": 19000 + i}]}}
                 for i, name in enumerate(("bench", "client"))]
    res = compile_mesh(MeshInputs.from_resources([mesh, *workloads]))
    snap = res.snapshots[("bench", "bench")]
    return msgspec.to_builtins(snap.telemetry)  # type: ignore[no-any-return]


def start_tulle_telemetry(ps: ProcessSet, origin_port: int, protocol: str) -> Running:
    """`bench.peers.start_tulle`'s proxy with the compiled `telemetry` section."""
    if protocol != "http1":
        raise Skip("the telemetry budget is measured on HTTP/1.1 only")
    port, admin = free_port(), free_port()
    cfg = tulle_config(port, admin, origin_port, protocol)
    cfg["telemetry"] = telemetry_section()
    cfg["node"] = {"name": "bench-0", "namespace": "bench"}
    conf = ps.tmp / "tulle-telemetry-http1.json"
    conf.write_text(json.dumps(cfg, indent=2))
    proc = ps.start("tulle-telemetry-http1", [*tulle_cmd(), "proxy", "run", "--config", str(conf),
                                              "--watch-interval", "0", "--log-level", "warning"],
                    cpu=PROXY_CPU)
    wait_port(port, proc)
    return Running("tulle-telemetry", port, proc, tree(proc.pid))


TELEMETRY_STARTERS = {"tulle-telemetry": start_tulle_telemetry}

__all__ = ["OBSERVABILITY", "TELEMETRY_STARTERS", "telemetry_section"]
