"""`RetryPolicy`: how calls to a Service (or through a route, or one rule of it) are retried.

Shape per ADR 0037 (Kuma's MeshRetry, flattened: the targetRef is the destination): every field
optional, an unset one inherits from the next less specific level (route rule > route > Service
> its namespace > Mesh > `Mesh.spec.defaults`); `backoff` and `budget` are merged as one value each.  ADR 0039
says what each field does in the proxy.  `budget` is the Service's (its cluster's) retry budget,
shared by every route to it: it may be set on a Service, Namespace or Mesh target only.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from tulle.api.errors import field_error
from tulle.api.fields import Duration, duration_ms
from tulle.api.meta import Model
from tulle.api.policies.authorization import NAMESPACE_TARGET
from tulle.api.policy import (
    GRPCROUTE_TARGET,
    HTTPROUTE_TARGET,
    MESH_TARGET,
    POLICY_API_VERSION,
    SERVICE_TARGET,
    Policy,
    PolicySpec,
)
from tulle.api.registry import register

GRPC_CODES: dict[str, int] = {
    "Canceled": 1, "Unknown": 2, "InvalidArgument": 3, "DeadlineExceeded": 4, "NotFound": 5,
    "AlreadyExists": 6, "PermissionDenied": 7, "ResourceExhausted": 8,
    "FailedPrecondition": 9, "Aborted": 10, "OutOfRange": 11, "Unimplemented": 12,
    "Internal": 13, "Unavailable": 14, "DataLoss": 15, "Unauthenticated": 16}
"""gRPC status names (Kuma's spelling) and their codes."""

RetryOn = Literal["5xx", "gateway-error", "reset", "connect-failure", "refused-stream"]
GRPCStatusName = Literal["Canceled", "Unknown", "InvalidArgument", "DeadlineExceeded",
                         "NotFound", "AlreadyExists", "PermissionDenied", "ResourceExhausted",
                         "FailedPrecondition", "Aborted", "OutOfRange", "Unimplemented",
                         "Internal", "Unavailable", "DataLoss", "Unauthenticated"]


class RetryBudget(Model):
    """Retries allowed on top of regular traffic: `percent` of requests plus a floor per second
    (also `Mesh.spec.defaults.retryBudget`, which is where `tulle.api.mesh` takes it from)."""

    percent: Annotated[int, Field(ge=0, le=100)] = 20
    minRetriesPerSecond: Annotated[int, Field(ge=0, le=1_000_000)] = 10
    ttl: Duration = "10s"
    """Window over which requests and retries are counted (1s .. 10m)."""

    @model_validator(mode="after")
    def _window(self) -> RetryBudget:
        if not 1000 <= duration_ms(self.ttl) <= 600_000:
            raise field_error(("ttl",), "must be between 1s and 10m")
        return self


class RetryBackoff(Model):
    baseInterval: Duration = "25ms"
    maxInterval: Duration = "250ms"

    @model_validator(mode="after")
    def _order(self) -> RetryBackoff:
        base = duration_ms(self.baseInterval)
        if base == 0 or base > 60_000:
            raise field_error(("baseInterval",), "must be between 1ms and 1m")
        top = duration_ms(self.maxInterval)
        if top < base or top > 600_000:
            raise field_error(("maxInterval",), "must be at least baseInterval and at most 10m")
        return self


class RetrySettings(Model):
    """The fields of a RetryPolicy's spec, also `Mesh.spec.defaults.retry` (ADR 0037)."""

    attempts: Annotated[int, Field(ge=0, le=10)] | None = None
    """Retries after the first try (Gateway API `attempts`); 0: none.  Built-in default 2."""
    retryOn: Annotated[list[RetryOn], Field(max_length=5)] | None = None
    """Built-in default: connect-failure, refused-stream, gateway-error."""
    statusCodes: Annotated[list[Annotated[int, Field(ge=100, le=599)]],
                           Field(max_length=32)] | None = None
    grpcStatuses: Annotated[list[GRPCStatusName], Field(max_length=16)] | None = None
    """Retried when a trailers-only gRPC answer carries one of them."""
    backoff: RetryBackoff | None = None
    nonIdempotent: bool | None = None
    """Retry POST, PATCH and CONNECT on a status, reset or timeout too (default false)."""
    maxReplayBytes: Annotated[int, Field(ge=0, le=16_777_216)] | None = None
    """Request body kept for replay (default 64 KiB); a request with more is not retried."""
    budget: RetryBudget | None = None
    """The Service's retry budget (default: `Mesh.spec.defaults.retryBudget`)."""


class RetryPolicySpec(PolicySpec, RetrySettings):
    @model_validator(mode="after")
    def _some(self) -> RetryPolicySpec:
        if not any(getattr(self, f) is not None for f in RetrySettings.model_fields):
            raise field_error((), "set at least one of " + ", ".join(RetrySettings.model_fields))
        return self


@register(api_version=POLICY_API_VERSION, kind="RetryPolicy", plural="retrypolicies",
          short_names=("rp",))
class RetryPolicy(Policy):
    TARGETS: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {MESH_TARGET, NAMESPACE_TARGET, SERVICE_TARGET, HTTPROUTE_TARGET, GRPCROUTE_TARGET})

    apiVersion: Literal["policy.tulle.dev/v1alpha1"] = POLICY_API_VERSION
    kind: Literal["RetryPolicy"] = "RetryPolicy"
    spec: RetryPolicySpec

    @model_validator(mode="after")
    def _budget_is_a_services(self) -> RetryPolicy:
        if self.spec.budget is not None and self.spec.targetRef.target in (
                HTTPROUTE_TARGET, GRPCROUTE_TARGET):
            raise field_error(("spec", "budget"), "a retry budget is a Service's (shared by "
                              "every route to it): target the Service or the Mesh")
        return self
