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


def identity_workload(name: str) -> str:
    """The further workload (`namespace/name`) whose certificate the identity section `name`
    is (`workload:<namespace>/<name>`); "" for any other name, the first workload's too."""
    return name[len(_NODE_PREFIX):] if name.startswith(_NODE_PREFIX) else ""


def is_reserved_identity(name: str) -> bool:
    """True for names only the proxy may fill (a snapshot carrying one is refused)."""
    return name == WORKLOAD_IDENTITY or name.startswith(_NODE_PREFIX)


def agent_inbound_alias(inbound_port: int) -> str:
    """The loopback address by which a node agent reaches the inbound listener of a pod it
    serves itself (a pod of the node calling another, ADR 0050): `127.1.<hi>.<lo>` of the
    pod's inbound port, unique per pod on a node.  The control plane's node merge dials it
    instead of the pod's address; `tulle iptables node apply` DNATs it (nat OUTPUT) to
    127.0.0.1:<inbound port>, so the listener still sees the pod's port as the original
    destination.  Shared by both planes, which may not import each other."""
    if not 0 < inbound_port < 65536:
        raise ValueError(f"not a port: {inbound_port}")
    return f"127.1.{inbound_port >> 8}.{inbound_port & 0xFF}"
