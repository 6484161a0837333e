"""`HealthCheckPolicy`: the callers' proxies probe a Service's endpoints actively.

Shapes follow ADR 0037 (Kuma's `MeshHealthCheck` for names): every field optional, flat in
`spec` next to `targetRef` (Mesh, the policy's Namespace, or a Service), and
`Mesh.spec.defaults.healthCheck` takes the same settings.  The probe is exactly one of `http`,
`grpc` and `tcp`; when levels are merged (`plugins/endpoint_health.py`) the three count as one
field, so a Service's `tcp` is never mixed with the Mesh's `http`.  ADR 0040.
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

PROBES = ("http", "grpc", "tcp")


class HTTPProbe(Model):
    path: Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^/[!-~]*$")] = "/"
    expectedStatuses: Annotated[list[Annotated[int, Field(ge=100, le=599)]],
                                Field(min_length=1, max_length=64)] | None = None
    """Statuses that pass; unset: 200-299."""
    host: Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[!-~]+$")] | None = None
    """The probe's Host; unset: the endpoint's address and port."""


class GRPCProbe(Model):
    serviceName: Annotated[str, Field(max_length=253)] = ""
    """The `service` asked about (`grpc.health.v1`); empty: the server as a whole."""


class TCPProbe(Model):
    pass


class HealthCheckSettings(Model):
    """The settings, as a policy's spec and `Mesh.spec.defaults.healthCheck` write them."""

    http: HTTPProbe | None = None
    grpc: GRPCProbe | None = None
    tcp: TCPProbe | None = None
    interval: Duration | None = None
    """Between probes of one endpoint.  Default 5s."""
    timeout: Duration | None = None
    """A probe not answered this long fails.  Default 1s."""
    jitter: Duration | None = None
    """A random 0..jitter added to each wait.  Default 500ms."""
    healthyThreshold: Annotated[int, Field(ge=1, le=1000)] | None = None
    """Passed probes in a row that bring an endpoint back.  Default 2."""
    unhealthyThreshold: Annotated[int, Field(ge=1, le=1000)] | None = None
    """Failed probes in a row that take it out.  Default 3."""

    @model_validator(mode="after")
    def _consistent(self) -> HealthCheckSettings:
        probes = [p for p in PROBES if getattr(self, p) is not None]
        if len(probes) > 1:
            raise field_error((probes[1],), f"only one of http, grpc, tcp (also {probes[0]})")
        for f, low in (("interval", 1), ("timeout", 1), ("jitter", 0)):
            v = getattr(self, f)
            if v is not None and not low <= duration_ms(v) <= 86_400_000:
                raise field_error((f,), f"must be from {low}ms to 24h")
        if (self.interval is not None and self.timeout is not None
                and duration_ms(self.timeout) > duration_ms(self.interval)):
            raise field_error(("timeout",), "must not exceed interval")
        return self


FIELDS: tuple[str, ...] = tuple(HealthCheckSettings.model_fields)


class HealthCheckPolicySpec(PolicySpec, HealthCheckSettings):
    @model_validator(mode="after")
    def _some(self) -> HealthCheckPolicySpec:
        if all(getattr(self, f) is None for f in FIELDS):
            raise field_error((), "set at least one of " + ", ".join(FIELDS))
        return self


@register(api_version=POLICY_API_VERSION, kind="HealthCheckPolicy",
          plural="healthcheckpolicies", short_names=("hcp",))
class HealthCheckPolicy(Policy):
    TARGETS: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {MESH_TARGET, SERVICE_TARGET, NAMESPACE_TARGET})

    apiVersion: Literal["policy.tulle.dev/v1alpha1"] = POLICY_API_VERSION
    kind: Literal["HealthCheckPolicy"] = "HealthCheckPolicy"
    spec: HealthCheckPolicySpec
