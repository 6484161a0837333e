"""`TimeoutPolicy`: connect, request, per-try, idle and stream idle timeouts for a Mesh,
Service or route (rule).

Compiled by `controlplane/compiler/plugins/timeouts.py` (ADR 0037 precedence, ADR 0039): an
unset field inherits from the next less specific level, finally `Mesh.spec.defaults` and the
proxy's defaults.  "0s" disables a request, per-try, idle or stream idle timeout; a connect
timeout must be positive.  `connectTimeout` and `idleTimeout` are a Service's connections'
(its cluster's): they may not be set on a route target.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import model_validator

from tulle.api.errors import field_error
from tulle.api.fields import Duration, duration_ms
from tulle.api.policies.authorization import NAMESPACE_TARGET
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
    """Idle upstream connections of the Service's cluster are closed after this long."""
    perTryTimeout: Duration | None = None
    """HTTP/gRPC only: each try to a backend (Gateway API `timeouts.backendRequest`)."""
    streamIdleTimeout: Duration | None = None
    """HTTP/gRPC only: a request with no body bytes either way this long is ended."""

    @model_validator(mode="after")
    def _some(self) -> TimeoutPolicySpec:
        fields = ("connectTimeout", "requestTimeout", "idleTimeout", "perTryTimeout",
                  "streamIdleTimeout")
        if all(getattr(self, f) is None for f in fields):
            raise field_error((), "set at least one of " + ", ".join(fields))
        if self.connectTimeout is not None and duration_ms(self.connectTimeout) == 0:
            raise field_error(("connectTimeout",), "must be greater than 0")
        return self


@register(api_version=POLICY_API_VERSION, kind="TimeoutPolicy", plural="timeoutpolicies", short_names=("tp",))
class TimeoutPolicy(Policy):
    TARGETS: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {MESH_TARGET, NAMESPACE_TARGET, SERVICE_TARGET, HTTPROUTE_TARGET, GRPCROUTE_TARGET, TCPROUTE_TARGET}
    )

    apiVersion: Literal["policy.tulle.dev/v1alpha1"] = POLICY_API_VERSION
    kind: Literal["TimeoutPolicy"] = "TimeoutPolicy"
    spec: TimeoutPolicySpec

    @model_validator(mode="after")
    def _request_needs_l7(self) -> TimeoutPolicy:
        target = self.spec.targetRef.target
        if target == TCPROUTE_TARGET:
            for f in ("requestTimeout", "perTryTimeout", "streamIdleTimeout"):
                if getattr(self.spec, f) is not None:
                    raise field_error(("spec", f), "does not apply to a TCPRoute (TCP has no "
                                      "requests)")
        if target in (HTTPROUTE_TARGET, GRPCROUTE_TARGET):
            for f in ("connectTimeout", "idleTimeout"):
                if getattr(self.spec, f) is not None:
                    raise field_error(("spec", f), "applies to a Service's connections (its "
                                      "cluster), shared by every route: target the Service or "
                                      "the Mesh")
        return self
