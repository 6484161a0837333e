"""`RateLimitPolicy`: how many requests (and TCP connections) a Service's workloads admit.

Shapes follow ADR 0037 (Kuma's `MeshRateLimit` for names): settings flat in `spec`, every field
optional but at least one of `local`, `global`, `tcp`; `Mesh`, the policy's `Namespace`, a
`Service`, or an HTTPRoute / GRPCRoute (optionally one rule by `sectionName`).  Server side:
enforced on the inbound side of the target's workloads (`plugins/rate_limit.py`).  Precedence
per field (`local`, `global`, `tcp`, each whole), most specific first: route rule, route,
Service, namespace, Mesh.

* `local`: a token bucket per workload (per proxy process), `requests` per `interval`, keyed
  `by` the route (one bucket), the caller (`Source`: its SPIFFE ID under mTLS, else its IP) or
  a header's value (`Header` with `name`).
* `global`: `requests` per `interval` across every workload of the target, counted in Redis at
  `redis` (`host:port`); `failureMode` when Redis is unreachable or slower than `timeout`:
  `Open` admits (up to `fallbackRequests` per interval per workload when set), `Closed`
  answers 429.  `redis` is an addition to ADR 0037's shape: the mesh has no Redis of its own.
* `tcp`: new connections per `interval` on the workloads' opaque TCP ports.

ADR 0041.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from tulle.api.errors import field_error
from tulle.api.fields import Duration, HeaderName, duration_ms
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

Count = Annotated[int, Field(ge=1, le=1_000_000_000)]
CREDENTIALS = frozenset({"authorization", "proxy-authorization", "cookie", "host",
                         "content-length", "transfer-encoding", "connection", "te", "upgrade",
                         "keep-alive", "proxy-connection"})


def _interval(value: str, what: tuple[str | int, ...] = ("interval",)) -> None:
    if not 1 <= duration_ms(value) <= 86_400_000:
        raise field_error(what, "must be from 1ms to 24h")


class LimitKey(Model):
    type: Literal["Route", "Source", "Header"] = "Route"
    name: HeaderName | None = None
    """The header (`type: Header` only)."""

    @model_validator(mode="after")
    def _name(self) -> LimitKey:
        if self.type == "Header":
            if self.name is None:
                raise field_error(("name",), "required with type Header")
            if self.name.lower() in CREDENTIALS:
                raise field_error(("name",), f"{self.name!r} cannot key a limit (a framing "
                                  "field or a credential)")
        elif self.name is not None:
            raise field_error(("name",), "only with type Header")
        return self


class LocalRateLimit(Model):
    requests: Count
    interval: Duration
    by: LimitKey | None = None
    maxBuckets: Annotated[int, Field(ge=1, le=1_000_000)] | None = None

    @model_validator(mode="after")
    def _check(self) -> LocalRateLimit:
        _interval(self.interval)
        return self


class RedisTLSConfig(Model):
    caFile: Annotated[str, Field(max_length=4096, pattern=r"^/")] | None = None
    """A PEM bundle on each proxy's host to verify Redis by; absent: the system's CAs."""
    serverName: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    """The name (or IP) Redis's certificate must carry; absent: the host of `redis`."""


class GlobalRateLimit(Model):
    requests: Count
    interval: Duration
    redis: Annotated[str, Field(min_length=3, max_length=300,
                                pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")]
    failureMode: Literal["Open", "Closed"] = "Open"
    timeout: Duration = "10ms"
    fallbackRequests: Annotated[int, Field(ge=0, le=1_000_000_000)] | None = None
    username: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[!-~]+$")] | None \
        = None
    """A Redis ACL user for `AUTH`; needs `passwordFile`."""
    passwordFile: Annotated[str, Field(max_length=4096, pattern=r"^/")] | None = None
    """A file on each proxy's host holding the Redis password (absolute path).  The password
    itself never goes through the control plane, the API or `proxy-config`."""
    tls: RedisTLSConfig | None = None
    """Speak TLS to Redis (its `tls-port`)."""

    @model_validator(mode="after")
    def _check(self) -> GlobalRateLimit:
        _interval(self.interval)
        if not 1 <= duration_ms(self.timeout) <= 1000:
            raise field_error(("timeout",), "must be from 1ms to 1s")
        if not 1 <= int(self.redis.rsplit(":", 1)[1]) <= 65535:
            raise field_error(("redis",), "the port must be 1-65535")
        if self.fallbackRequests is not None and self.failureMode == "Closed":
            raise field_error(("fallbackRequests",), "only with failureMode Open")
        if self.username is not None and self.passwordFile is None:
            raise field_error(("username",), "needs passwordFile")
        return self


class TCPRateLimit(Model):
    connections: Annotated[int, Field(ge=1, le=10_000_000)]
    interval: Duration

    @model_validator(mode="after")
    def _check(self) -> TCPRateLimit:
        _interval(self.interval)
        return self


class RateLimitSettings(Model):
    local: LocalRateLimit | None = None
    global_: GlobalRateLimit | None = Field(default=None, alias="global")
    tcp: TCPRateLimit | None = None


class RateLimitPolicySpec(PolicySpec, RateLimitSettings):
    @model_validator(mode="after")
    def _some(self) -> RateLimitPolicySpec:
        if self.local is None and self.global_ is None and self.tcp is None:
            raise field_error((), "set at least one of local, global, tcp")
        return self


@register(api_version=POLICY_API_VERSION, kind="RateLimitPolicy", plural="ratelimitpolicies",
          short_names=("rlp",))
class RateLimitPolicy(Policy):
    TARGETS: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {MESH_TARGET, NAMESPACE_TARGET, SERVICE_TARGET, HTTPROUTE_TARGET, GRPCROUTE_TARGET})

    apiVersion: Literal["policy.tulle.dev/v1alpha1"] = POLICY_API_VERSION
    kind: Literal["RateLimitPolicy"] = "RateLimitPolicy"
    spec: RateLimitPolicySpec

    @model_validator(mode="after")
    def _tcp_needs_service(self) -> RateLimitPolicy:
        if self.spec.tcp is not None and self.spec.targetRef.target in (HTTPROUTE_TARGET,
                                                                          GRPCROUTE_TARGET):
            raise field_error(("spec", "tcp"), "does not apply to a route (routes carry "
                              "requests, not connections)")
        return self
