"""`FaultInjectionPolicy`: delay or abort a share of a Service's (or one route rule's) requests,
for chaos experiments.

Shapes follow ADR 0037 (Kuma's `MeshFaultInjection` for names): settings flat in `spec`, every
field optional but at least one of `delay` and `abort`.  Server side: the target's workloads
inject the faults on their inbound side (`plugins/fault_injection.py`), so every caller meets
them, meshed or not.  Targets: a Service, or an HTTPRoute / GRPCRoute (all its rules, or the
rule named by `sectionName`), whose requests are then told apart on the inbound side by the
rule's matches.  Precedence per field (`delay`, `abort`, `match`), most specific first: route
rule, route, Service (ADR 0037).  ADR 0041.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from tulle.api.errors import field_error
from tulle.api.fields import Duration, HeaderName, duration_ms
from tulle.api.meta import Model
from tulle.api.policy import (
    GRPCROUTE_TARGET,
    HTTPROUTE_TARGET,
    POLICY_API_VERSION,
    SERVICE_TARGET,
    Policy,
    PolicySpec,
)
from tulle.api.registry import register

Percent = Annotated[int, Field(ge=0, le=100)]


class FaultDelay(Model):
    fixedDelay: Duration
    """How long a delayed request waits (1ms to 1h)."""
    percent: Percent = 100

    @model_validator(mode="after")
    def _bounds(self) -> FaultDelay:
        if not 1 <= duration_ms(self.fixedDelay) <= 3_600_000:
            raise field_error(("fixedDelay",), "must be from 1ms to 1h")
        return self


class FaultAbort(Model):
    httpStatus: Annotated[int, Field(ge=200, le=599)] | None = None
    grpcStatus: Annotated[int, Field(ge=1, le=16)] | None = None
    """A gRPC status code, 1-16 (0 is OK, not a fault)."""
    percent: Percent = 100

    @model_validator(mode="after")
    def _one(self) -> FaultAbort:
        if self.httpStatus is None and self.grpcStatus is None:
            raise field_error((), "set httpStatus, grpcStatus or both")
        return self


class FaultHeaderMatch(Model):
    name: HeaderName
    value: Annotated[str, Field(max_length=4096)]


class FaultMatch(Model):
    headers: Annotated[list[FaultHeaderMatch], Field(min_length=1, max_length=16)]

    @model_validator(mode="after")
    def _unique(self) -> FaultMatch:
        seen: set[str] = set()
        for i, h in enumerate(self.headers):
            if h.name.lower() in seen:
                raise field_error(("headers", i, "name"), f"{h.name!r} appears twice")
            seen.add(h.name.lower())
        return self


class FaultInjectionSettings(Model):
    delay: FaultDelay | None = None
    abort: FaultAbort | None = None
    match: FaultMatch | None = None
    """Only requests with every one of these headers meet the faults."""


class FaultInjectionPolicySpec(PolicySpec, FaultInjectionSettings):
    @model_validator(mode="after")
    def _some(self) -> FaultInjectionPolicySpec:
        if self.delay is None and self.abort is None:
            raise field_error((), "set at least one of delay, abort")
        return self


@register(api_version=POLICY_API_VERSION, kind="FaultInjectionPolicy",
          plural="faultinjectionpolicies", short_names=("fip",))
class FaultInjectionPolicy(Policy):
    TARGETS: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {SERVICE_TARGET, HTTPROUTE_TARGET, GRPCROUTE_TARGET})

    apiVersion: Literal["policy.tulle.dev/v1alpha1"] = POLICY_API_VERSION
    kind: Literal["FaultInjectionPolicy"] = "FaultInjectionPolicy"
    spec: FaultInjectionPolicySpec
