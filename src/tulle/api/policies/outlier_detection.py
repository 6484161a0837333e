"""`OutlierDetectionPolicy`: eject a Service's endpoints by what its callers' requests see.

Shapes follow ADR 0037 (Kuma's `MeshCircuitBreaker.outlierDetection` for names): every field
optional, flat in `spec` next to `targetRef` (Mesh, the policy's Namespace, or a Service), and
`Mesh.spec.defaults.outlierDetection` takes the same settings.  The compiler merges them field
by field (`plugins/endpoint_health.py`) into the contract's `clusters[].outlier_detection`
(`proxyconfig/health.py`, whose defaults apply to what no level sets).  ADR 0040.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from tulle.api.errors import field_error
from tulle.api.fields import Duration, duration_ms
from tulle.api.meta import Model
from tulle.api.policies.authorization import NAMESPACE_TARGET
from tulle.api.policy import MESH_TARGET, POLICY_API_VERSION, SERVICE_TARGET, Policy, PolicySpec
from tulle.api.registry import register

Count = Annotated[int, Field(ge=0, le=1000)]


def _bounded(value: str | None, path: str, low_ms: int, high_ms: int) -> None:
    if value is not None and not low_ms <= duration_ms(value) <= high_ms:
        raise field_error((path,), f"must be from {low_ms}ms to {high_ms // 1000}s")


class SuccessRateSettings(Model):
    minimumHosts: Annotated[int, Field(ge=1, le=1000)] = 5
    requestVolume: Annotated[int, Field(ge=1, le=1_000_000)] = 100
    standardDeviationFactor: Annotated[float, Field(ge=0.001, le=100)] = 1.9
    """Endpoints below the mean success rate by more than this many standard deviations are
    ejected."""


class OutlierDetectionSettings(Model):
    """The settings, as a policy's spec and `Mesh.spec.defaults.outlierDetection` write them."""

    consecutive5xx: Count | None = None
    """Consecutive 5xx (responses and failures without one) that eject; 0: off.  Default 5."""
    consecutiveGatewayErrors: Count | None = None
    """Consecutive 502/503/504 or timeouts that eject; 0: off.  Default 5."""
    consecutiveLocalOriginFailures: Count | None = None
    """Consecutive connect failures, resets, protocol errors that eject; 0: off.  Default 5."""
    successRate: SuccessRateSettings | None = None
    interval: Duration | None = None
    """How often ejections end and success rates are judged.  Default 10s."""
    baseEjectionTime: Duration | None = None
    """The first ejection's length; each repeat adds as much.  Default 30s."""
    maxEjectionTime: Duration | None = None
    """The longest ejection.  Default 300s."""
    maxEjectionPercent: Annotated[int, Field(ge=0, le=100)] | None = None
    """Share of the endpoints ejected at once (one may always be, unless 0).  Default 10."""

    @model_validator(mode="after")
    def _durations(self) -> OutlierDetectionSettings:
        for f in ("interval", "baseEjectionTime", "maxEjectionTime"):
            _bounded(getattr(self, f), f, 1, 86_400_000)
        if (self.baseEjectionTime is not None and self.maxEjectionTime is not None
                and duration_ms(self.maxEjectionTime) < duration_ms(self.baseEjectionTime)):
            raise field_error(("maxEjectionTime",), "must not be less than baseEjectionTime")
        return self


FIELDS: tuple[str, ...] = tuple(OutlierDetectionSettings.model_fields)
"""The fields merged one by one (ADR 0037), in the order `describe` shows them."""


class OutlierDetectionPolicySpec(PolicySpec, OutlierDetectionSettings):
    @model_validator(mode="after")
    def _some(self) -> OutlierDetectionPolicySpec:
        if all(getattr(self, f) is None for f in FIELDS):
            raise field_error((), "set at least one of " + ", ".join(FIELDS))
        return self


@register(api_version=POLICY_API_VERSION, kind="OutlierDetectionPolicy",
          plural="outlierdetectionpolicies", short_names=("odp",))
class OutlierDetectionPolicy(Policy):
    TARGETS: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {MESH_TARGET, SERVICE_TARGET, NAMESPACE_TARGET})

    apiVersion: Literal["policy.tulle.dev/v1alpha1"] = POLICY_API_VERSION
    kind: Literal["OutlierDetectionPolicy"] = "OutlierDetectionPolicy"
    spec: OutlierDetectionPolicySpec
