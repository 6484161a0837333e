"""`MutualTLSPolicy`: the mTLS mode of a Service (or one of its ports), or of the whole mesh.

Kuma's MeshTLS / Istio's PeerAuthentication in Tulle's policy-attachment shape (ADR 0033).
`spec.mode` is what `Mesh.spec.mtls.mode` says, for a narrower target:

- STRICT: the target's inbound ports accept only mTLS; clients originate mTLS;
- PERMISSIVE: the inbound ports also accept plaintext (onboarding, callers outside the mesh);
  mesh clients still originate mTLS (a PERMISSIVE server accepts both);
- DISABLED: plaintext both ways.

Precedence, most specific first: a policy on a Service port (`sectionName` = the port's name),
then on the Service, then on the Mesh, then `Mesh.spec.mtls.mode` (default STRICT).  Two
policies on the same target: the first by namespace/name wins, the other says `Conflicted`.
The `mtls` compiler plugin enforces it and writes its status.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from tulle.api.mesh import MTLSMode
from tulle.api.policy import MESH_TARGET, POLICY_API_VERSION, SERVICE_TARGET, Policy, PolicySpec
from tulle.api.registry import register


class MutualTLSPolicySpec(PolicySpec):
    mode: MTLSMode
    """STRICT, PERMISSIVE or DISABLED (no default: an override says what it overrides with)."""


@register(api_version=POLICY_API_VERSION, kind="MutualTLSPolicy", plural="mutualtlspolicies",
          short_names=("mtls",))
class MutualTLSPolicy(Policy):
    TARGETS: ClassVar[frozenset[tuple[str, str]]] = frozenset({MESH_TARGET, SERVICE_TARGET})

    apiVersion: Literal["policy.tulle.dev/v1alpha1"] = POLICY_API_VERSION
    kind: Literal["MutualTLSPolicy"] = "MutualTLSPolicy"
    spec: MutualTLSPolicySpec
