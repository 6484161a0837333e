"""Section names the proxy fills in itself: its workload certificates and the mesh's roots.

Why here, in the contract: the control plane compiles TLS settings that *refer* to these
sections (`TLSContext.identity`, `TLSContext.trust_bundle`) and the proxy *fills* them from
what it received over the stream (ADR 0028), so both planes need the same names and neither
may import the other.

A proxy fronting several workloads (a node agent, ADR 0032) holds one certificate per
workload: the first workload's is `workload`, every other one's `workload:<namespace>/<name>`,
and the control plane's node merge points each workload's TLS settings at its own.
"""

from __future__ import annotations

WORKLOAD_IDENTITY = "workload"
"""The `identities` name of the proxy's own (first) workload certificate."""
MESH_BUNDLE = "mesh"
"""The `trust_bundles` name of the mesh CA's roots."""
_NODE_PREFIX = WORKLOAD_IDENTITY + ":"


def workload_identity(namespace: str, name: str, *, first: bool = True) -> str:
    """The `identities` name of a fronted workload's certificate."""
    return WORKLOAD_IDENTITY if first else f"{_NODE_PREFIX}{namespace}/{name}"


def is_reserved_identity(name: str) -> bool:
    """True for names only the proxy may fill (a snapshot carrying one is refused)."""
    return name == WORKLOAD_IDENTITY or name.startswith(_NODE_PREFIX)
