"""`LoadBalancingPolicy`: how callers of a Service spread requests over its endpoints.

Shapes follow ADR 0037 (Kuma's `MeshLoadBalancingStrategy` for names): every field optional, the
settings flat in `spec` next to `targetRef` (Mesh, the policy's Namespace, or a Service), and
`Mesh.spec.defaults.loadBalancing` takes the same settings (`LoadBalancingSettings`).  The
compiler merges them field by field, most specific first (`plugins/load_balancing.py`), and
checks the merged result (a `hashPolicies` set on a Service whose `type` comes from the Mesh is
only known to be wrong then).  What one spec alone gets wrong is refused here, with its path.
ADR 0038.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from tulle.api.errors import field_error
from tulle.api.fields import Duration, HeaderName, duration_ms
from tulle.api.meta import Model
from tulle.api.policies.authorization import NAMESPACE_TARGET
from tulle.api.policy import MESH_TARGET, POLICY_API_VERSION, SERVICE_TARGET, Policy, PolicySpec
from tulle.api.registry import register

LBType = Literal["PeakEWMA", "RoundRobin", "Random", "LeastRequest", "RingHash", "Maglev"]
HASHING: frozenset[str] = frozenset({"RingHash", "Maglev"})
CookieName = Annotated[str, Field(min_length=1, max_length=256,
                                  pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]
ParamName = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^&=#\s]+$")]


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n ** 0.5) + 1))


class HashPolicy(Model):
    """One source of a request's hash key; the first that finds a value is used."""

    type: Literal["Header", "Cookie", "SourceIP", "QueryParameter"]
    name: str | None = None
    """The header, cookie or query parameter; not with `SourceIP`."""

    @model_validator(mode="after")
    def _name(self) -> HashPolicy:
        if self.type == "SourceIP":
            if self.name is not None:
                raise field_error(("name",), "not with type SourceIP")
            return self
        if self.name is None:
            raise field_error(("name",), f"required with type {self.type}")
        checks = {"Header": (HeaderName, "an HTTP header name (an RFC 9110 token)"),
                  "Cookie": (CookieName, "a cookie name (an RFC 6265 token)"),
                  "QueryParameter": (ParamName, "a query parameter name (no &, =, # or space)")}
        import pydantic

        kind, what = checks[self.type]
        try:
            pydantic.TypeAdapter(kind).validate_python(self.name, strict=True)
        except pydantic.ValidationError:
            raise field_error(("name",), f"{self.name!r} cannot be {what}") from None
        return self


class RingHashSettings(Model):
    pointsPerWeight: Annotated[int, Field(ge=1, le=4096)] = 160


class MaglevSettings(Model):
    tableSize: Annotated[int, Field(ge=7, le=65_537)] = 8191
    """A prime."""

    @model_validator(mode="after")
    def _prime(self) -> MaglevSettings:
        if not _is_prime(self.tableSize):
            raise field_error(("tableSize",), f"must be a prime, got {self.tableSize}")
        return self


class LeastRequestSettings(Model):
    choiceCount: Annotated[int, Field(ge=2, le=16)] = 2


class PeakEWMASettings(Model):
    decay: Duration = "10s"

    @model_validator(mode="after")
    def _positive(self) -> PeakEWMASettings:
        if not 1 <= duration_ms(self.decay) <= 600_000:
            raise field_error(("decay",), "must be from 1ms to 10m")
        return self


class SlowStartSettings(Model):
    window: Duration
    """A new endpoint's weight ramps over this long ("0s": off)."""
    minWeightPercent: Annotated[int, Field(ge=1, le=100)] = 10

    @model_validator(mode="after")
    def _bound(self) -> SlowStartSettings:
        if duration_ms(self.window) > 3_600_000:
            raise field_error(("window",), "must be at most 1h")
        return self


class LocalityAwareSettings(Model):
    enabled: bool = True


class LoadBalancingSettings(Model):
    """The settings, as a policy's spec and `Mesh.spec.defaults.loadBalancing` write them."""

    type: LBType | None = None
    hashPolicies: Annotated[list[HashPolicy], Field(min_length=1, max_length=8)] | None = None
    ringHash: RingHashSettings | None = None
    maglev: MaglevSettings | None = None
    leastRequest: LeastRequestSettings | None = None
    peakEWMA: PeakEWMASettings | None = None
    slowStart: SlowStartSettings | None = None
    localityAware: LocalityAwareSettings | None = None
    panicThreshold: Annotated[int, Field(ge=0, le=100)] | None = None
    """Percent of healthy endpoints below which every endpoint is used (0: never)."""

    @model_validator(mode="after")
    def _consistent(self) -> LoadBalancingSettings:
        t = self.type
        if t is None:
            return self
        if self.hashPolicies is not None and t not in HASHING:
            raise field_error(("hashPolicies",), f"type {t} does not hash (use RingHash or "
                                                 "Maglev)")
        if t in HASHING and self.slowStart is not None:
            raise field_error(("slowStart",), f"not with type {t} (a ramp would move keys)")
        if t in HASHING and self.localityAware is not None and self.localityAware.enabled:
            raise field_error(("localityAware",), f"not with type {t} (affinity wins)")
        return self


FIELDS: tuple[str, ...] = tuple(LoadBalancingSettings.model_fields)
"""The fields merged one by one (ADR 0037), in the order `describe` shows them."""


class LoadBalancingPolicySpec(PolicySpec, LoadBalancingSettings):
    @model_validator(mode="after")
    def _some(self) -> LoadBalancingPolicySpec:
        if all(getattr(self, f) is None for f in FIELDS):
            raise field_error((), "set at least one of " + ", ".join(FIELDS))
        return self


@register(api_version=POLICY_API_VERSION, kind="LoadBalancingPolicy",
          plural="loadbalancingpolicies", short_names=("lbp",))
class LoadBalancingPolicy(Policy):
    TARGETS: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {MESH_TARGET, SERVICE_TARGET, NAMESPACE_TARGET})

    apiVersion: Literal["policy.tulle.dev/v1alpha1"] = POLICY_API_VERSION
    kind: Literal["LoadBalancingPolicy"] = "LoadBalancingPolicy"
    spec: LoadBalancingPolicySpec
