"""`CircuitBreakerPolicy`: the bulkheads of a Service's cluster in every caller's proxy.

Issue 10 item 5: a cluster flooded past its limits must fail fast (503, flag `UO`) instead of
queueing without bound, and leave every other cluster of the same proxy untouched.  The proxy
already enforces per-cluster limits (`proxyconfig.model.ClusterLimits`, ADR 0017, Envoy's
circuit-breaker defaults 1024 / 1024 / 1024 / 3); this kind is how a user sets them.  Shapes
follow ADR 0037 (Kuma's `MeshCircuitBreaker.connectionLimits` for names): every field
optional, flat in `spec` next to `targetRef` (Mesh, the policy's Namespace, or a Service), and
`Mesh.spec.defaults.circuitBreaker` takes the same settings.  The compiler merges them field by
field (`plugins/circuit_breaker.py`).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from tulle.api.errors import field_error
from tulle.api.meta import Model
from tulle.api.policies.authorization import NAMESPACE_TARGET
from tulle.api.policy import MESH_TARGET, POLICY_API_VERSION, SERVICE_TARGET, Policy, PolicySpec
from tulle.api.registry import register

Positive = Annotated[int, Field(ge=1, le=1_000_000)]
NonNegative = Annotated[int, Field(ge=0, le=1_000_000)]


class CircuitBreakerSettings(Model):
    """The settings, as a policy's spec and `Mesh.spec.defaults.circuitBreaker` write them."""

    maxConnections: Positive | None = None
    """Upstream connections open or being opened to the Service's endpoints.  Default 1024."""
    maxPendingRequests: NonNegative | None = None
    """Requests waiting for a connection; 0: none may wait.  Default 1024."""
    maxRequests: Positive | None = None
    """Requests in flight to the Service.  Default 1024."""
    maxRetries: NonNegative | None = None
    """Retries in flight to the Service; 0: no retries.  Default 3."""


FIELDS: tuple[str, ...] = tuple(CircuitBreakerSettings.model_fields)
"""The fields merged one by one (ADR 0037), in the order `describe` shows them."""

CONTRACT: dict[str, str] = {"maxConnections": "max_connections",
                            "maxPendingRequests": "max_pending_requests",
                            "maxRequests": "max_requests", "maxRetries": "max_retries"}
"""Each field's name in the contract's `clusters[].limits`."""


class CircuitBreakerPolicySpec(PolicySpec, CircuitBreakerSettings):
    @model_validator(mode="after")
    def _some(self) -> CircuitBreakerPolicySpec:
        if all(getattr(self, f) is None for f in FIELDS):
            raise field_error((), "set at least one of " + ", ".join(FIELDS))
        return self


@register(api_version=POLICY_API_VERSION, kind="CircuitBreakerPolicy",
          plural="circuitbreakerpolicies", short_names=("cbp",))
class CircuitBreakerPolicy(Policy):
    TARGETS: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {MESH_TARGET, SERVICE_TARGET, NAMESPACE_TARGET})

    apiVersion: Literal["policy.tulle.dev/v1alpha1"] = POLICY_API_VERSION
    kind: Literal["CircuitBreakerPolicy"] = "CircuitBreakerPolicy"
    spec: CircuitBreakerPolicySpec
