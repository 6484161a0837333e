"""`Mesh`: the mesh-wide settings every proxy inherits (cluster-scoped, usually one).

Trust domain (the SPIFFE ID authority), the default mTLS mode, what happens to traffic for
destinations the mesh does not know, and defaults the traffic-management policies start from.
`defaults` is where new mesh-wide knobs go; each has a default here and in the reference.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field, model_validator

from tulle.api.errors import field_error
from tulle.api.fields import Duration, pattern
from tulle.api.meta import Model, Resource, Status
from tulle.api.observability import Observability
from tulle.api.policies.circuit_breaker import CircuitBreakerSettings
from tulle.api.policies.health_check import HealthCheckSettings
from tulle.api.policies.load_balancing import LoadBalancingSettings
from tulle.api.policies.outlier_detection import OutlierDetectionSettings
from tulle.api.policies.retry import RetryBudget, RetrySettings
from tulle.api.registry import register

MESH_API_VERSION: Final = "mesh.tulle.dev/v1alpha1"

TRUST_DOMAIN_RE = r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9_]*[a-z0-9])?)*$"
TrustDomain = Annotated[
    str,
    pattern(
        TRUST_DOMAIN_RE, 'a SPIFFE trust domain (lowercase letters, digits, "-", "_" and ".")', max_length=255
    ),
]
MTLSMode = Literal["STRICT", "PERMISSIVE", "DISABLED"]


class MTLS(Model):
    mode: MTLSMode = "STRICT"
    """STRICT: inbound accepts mTLS only. PERMISSIVE: mTLS or plaintext. DISABLED: plaintext."""


class OutboundTrafficPolicy(Model):
    mode: Literal["ALLOW_ANY", "REGISTRY_ONLY"] = "ALLOW_ANY"
    """ALLOW_ANY passes traffic to unknown destinations through; REGISTRY_ONLY refuses it."""


class MeshDefaults(Model):
    """Mesh-wide defaults; a policy attached to a Service or route overrides them."""

    connectTimeout: Duration = "1s"
    requestTimeout: Duration = "15s"
    """Whole request, first byte to last; "0s" disables."""
    idleTimeout: Duration = "5m"
    """Idle connections are closed after this long; "0s" disables."""
    drainPropagation: Duration = "1s"
    """How long a stopping sidecar keeps accepting after it left its Services' endpoints,
    while its callers learn it (Istio's `terminationDrainDuration`, ADR 0113); "0s": none."""
    retryBudget: RetryBudget = Field(default_factory=RetryBudget)
    loadBalancing: LoadBalancingSettings | None = None
    """Every Service's balancer where no LoadBalancingPolicy says otherwise (ADR 0037: the same
    settings as the policy's spec); unset: peak-EWMA with the documented defaults."""
    outlierDetection: OutlierDetectionSettings | None = None
    """Every Service's outlier detection where no OutlierDetectionPolicy says otherwise (ADR
    0037: the policy's settings); unset: none unless a policy asks."""
    healthCheck: HealthCheckSettings | None = None
    """Every Service's active health check where no HealthCheckPolicy says otherwise; unset:
    none unless a policy asks."""
    retry: RetrySettings | None = None
    """Retries of every route rule no RetryPolicy or rule `retry` sets (the shape of a
    RetryPolicy's spec without `targetRef` and `budget`: the budget is `retryBudget`);
    unset: no retries (ADR 0037, ADR 0039)."""

    circuitBreaker: CircuitBreakerSettings | None = None
    """Every Service's cluster limits where no CircuitBreakerPolicy says otherwise (ADR 0037:
    the policy's settings); unset: the proxy's 1024 / 1024 / 1024 / 3."""

    @model_validator(mode="after")
    def _one_budget(self) -> MeshDefaults:
        if self.retry is not None and self.retry.budget is not None:
            raise field_error(("retry", "budget"), "the Mesh's budget is retryBudget")
        return self


class MeshSpec(Model):
    trustDomain: TrustDomain = "cluster.local"
    trustDomainAliases: Annotated[list[TrustDomain], Field(max_length=8)] = Field(
        default_factory=list)
    """Trust domains treated as this one (Istio's `trustDomainAliases`): clients accept a
    server whose certificate names one, and authorization identities of one match the same
    workload in the others.  For changing `trustDomain` without an outage: certificates name
    the old one until they are re-issued (at renewal, or `tulle ca rotate`), so list the old
    one here first and remove it once they have been (ADR 0087)."""

    @model_validator(mode="after")
    def _aliases(self) -> MeshSpec:
        seen: set[str] = set()
        for i, alias in enumerate(self.trustDomainAliases):
            if alias == self.trustDomain:
                raise field_error(("trustDomainAliases", i), f"{alias} is the trustDomain itself")
            if alias in seen:
                raise field_error(("trustDomainAliases", i), f"{alias} is listed twice")
            seen.add(alias)
        return self

    mtls: MTLS = Field(default_factory=MTLS)
    outboundTrafficPolicy: OutboundTrafficPolicy = Field(default_factory=OutboundTrafficPolicy)
    defaults: MeshDefaults = Field(default_factory=MeshDefaults)
    observability: Observability = Field(default_factory=Observability)
    """What every proxy observes and who may look: golden metrics (`metrics`), access and flow
    logs (`accessLog`, `flowLog`), tracing (`tracing`), live tap (`tap`)
    (`api/observability.py`)."""


@register(api_version=MESH_API_VERSION, kind="Mesh", plural="meshes", scope="Cluster", short_names=("mesh",))
class Mesh(Resource):
    apiVersion: Literal["mesh.tulle.dev/v1alpha1"] = MESH_API_VERSION
    kind: Literal["Mesh"] = "Mesh"
    spec: MeshSpec = Field(default_factory=MeshSpec)
    status: Status | None = None
