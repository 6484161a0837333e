"""`TimeoutPolicy`: connect, request and idle timeouts for a Mesh, Service or route.

Schema and validation only; the traffic-management issue compiles it.  Each field overrides the
same field of `Mesh.spec.defaults`; an unset field inherits.  "0s" disables a request or idle
timeout; a connect timeout must be positive.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import model_validator

from tulle.api.errors import field_error
from tulle.api.fields import Duration, duration_ms
from tulle.api.policy import (
    GRPCROUTE_TARGET,
    HTTPROUTE_TARGET,
    MESH_TARGET,
    POLICY_API_VERSION,
    SERVICE_TARGET,
    TCPROUTE_TARGET,
    Policy,
    PolicySpec,
)
from tulle.api.registry import register


class TimeoutPolicySpec(PolicySpec):
    connectTimeout: Duration | None = None
    requestTimeout: Duration | None = None
    """HTTP/gRPC only: first request byte to last response byte."""
    idleTimeout: Duration | None = None

    @model_validator(mode="after")
    def _some(self) -> TimeoutPolicySpec:
        if self.connectTimeout is None and self.requestTimeout is None and self.idleTimeout is None:
            raise field_error((), "set at least one of connectTimeout, requestTimeout, idleTimeout")
        if self.connectTimeout is not None and duration_ms(self.connectTimeout) == 0:
            raise field_error(("connectTimeout",), "must be greater than 0")
        return self


@register(api_version=POLICY_API_VERSION, kind="TimeoutPolicy", plural="timeoutpolicies", short_names=("tp",))
class TimeoutPolicy(Policy):
    TARGETS: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {MESH_TARGET, SERVICE_TARGET, HTTPROUTE_TARGET, GRPCROUTE_TARGET, TCPROUTE_TARGET}
    )

    apiVersion: Literal["policy.tulle.dev/v1alpha1"] = POLICY_API_VERSION
    kind: Literal["TimeoutPolicy"] = "TimeoutPolicy"
    spec: TimeoutPolicySpec

    @model_validator(mode="after")
    def _request_needs_l7(self) -> TimeoutPolicy:
        if self.spec.targetRef.target == TCPROUTE_TARGET and self.spec.requestTimeout is not None:
            raise field_error(
                ("spec", "requestTimeout"), "does not apply to a TCPRoute (TCP has no requests)"
            )
        return self
