"""Types shared by the Gateway API route kinds: references, header filters, route status.

Field names, defaults and limits are those of `gateway.networking.k8s.io/v1`, so a route written
for another GAMMA mesh validates here unchanged.  A Service parent is `group: ""` (or `core`,
as Linkerd writes it) with `kind: Service`; other parents (a `Gateway`) are valid resources that
the compiler reports as not accepted until the gateways issue.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Final, Literal

from pydantic import Field, model_validator

from tulle.api.errors import field_error, quote
from tulle.api.fields import (
    CORE_GROUPS,
    Group,
    HeaderName,
    Hostname,
    Kind,
    Namespace,
    ObjectName,
    Port,
    SectionName,
    Weight,
)
from tulle.api.meta import Condition, Model

GATEWAY_GROUP: Final = "gateway.networking.k8s.io"
GATEWAY_V1: Final = "gateway.networking.k8s.io/v1"
GATEWAY_V1ALPHA2: Final = "gateway.networking.k8s.io/v1alpha2"
GATEWAY_V1BETA1: Final = "gateway.networking.k8s.io/v1beta1"
LINKERD_V1BETA3: Final = "policy.linkerd.io/v1beta3"
LINKERD_V1BETA2: Final = "policy.linkerd.io/v1beta2"

HTTPRouteVersion = Literal[
    "gateway.networking.k8s.io/v1",
    "gateway.networking.k8s.io/v1beta1",
    "policy.linkerd.io/v1beta3",
    "policy.linkerd.io/v1beta2",
]
HTTPROUTE_VERSIONS: Final = (GATEWAY_V1, GATEWAY_V1BETA1, LINKERD_V1BETA3, LINKERD_V1BETA2)
"""Every apiVersion an HTTPRoute is accepted in, preferred first.  Gateway API serves `v1beta1`
with the `v1` schema; Linkerd's `policy.linkerd.io` HTTPRoute (v1beta2, v1beta3) is a subset of
it (v1beta3 added `timeouts`), so a route written for Linkerd validates unchanged (ADR 0024)."""

GRPCRouteVersion = Literal["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1alpha2"]
GRPCROUTE_VERSIONS: Final = (GATEWAY_V1, GATEWAY_V1ALPHA2)
"""GRPCRoute graduated to `v1` in Gateway API 1.1 with the `v1alpha2` schema unchanged."""

CONTROLLER_NAME: Final = "tulle.dev/mesh-controller"
"""What Tulle writes as `status.parents[].controllerName` (Gateway API: a domain-prefixed path)."""


class ParentReference(Model):
    """The object a route attaches to; for a mesh route, a Service (GAMMA)."""

    group: Group = GATEWAY_GROUP
    kind: Kind = "Gateway"
    namespace: Namespace | None = None
    name: ObjectName
    sectionName: SectionName | None = None
    port: Port | None = None

    @property
    def is_service(self) -> bool:
        return self.kind == "Service" and self.group in CORE_GROUPS


class BackendObjectReference(Model):
    group: Group = ""
    kind: Kind = "Service"
    name: ObjectName
    namespace: Namespace | None = None
    port: Port | None = None

    @property
    def is_service(self) -> bool:
        return self.kind == "Service" and self.group in CORE_GROUPS

    @model_validator(mode="after")
    def _service_port(self) -> BackendObjectReference:
        if self.is_service and self.port is None:
            raise field_error(("port",), "required when referring to a Service")
        return self


class BackendRef(BackendObjectReference):
    weight: Weight = 1
    """Share of requests, relative to the rule's other backends; 0 sends none."""


class LocalObjectReference(Model):
    group: Group
    kind: Kind
    name: ObjectName


class HTTPHeader(Model):
    name: HeaderName
    value: Annotated[str, Field(min_length=1, max_length=4096)]


def _unique_names(items: Sequence[HTTPHeader | str], field: str) -> None:
    seen: set[str] = set()
    for i, item in enumerate(items):
        name = item if isinstance(item, str) else item.name
        if name in seen:  # exact duplicates, as the Kubernetes list-map key rejects them
            sub: tuple[str | int, ...] = (field, i) if isinstance(item, str) else (field, i, "name")
            raise field_error(sub, f"header {quote(name)} appears more than once")
        seen.add(name)


class HTTPHeaderFilter(Model):
    """Set (replace), add (append) or remove headers."""

    set: Annotated[list[HTTPHeader], Field(max_length=16)] | None = None
    add: Annotated[list[HTTPHeader], Field(max_length=16)] | None = None
    remove: Annotated[list[HeaderName], Field(max_length=16)] | None = None

    @model_validator(mode="after")
    def _unique(self) -> HTTPHeaderFilter:
        for field in ("set", "add", "remove"):
            items = getattr(self, field)
            if items:
                _unique_names(items, field)
        return self


class Fraction(Model):
    numerator: Annotated[int, Field(ge=0)]
    denominator: Annotated[int, Field(ge=1)] = 100

    @model_validator(mode="after")
    def _le(self) -> Fraction:
        if self.numerator > self.denominator:
            raise field_error(
                ("numerator",), f"must be <= denominator ({self.denominator}), got {self.numerator}"
            )
        return self


class HTTPRequestMirrorFilter(Model):
    backendRef: BackendObjectReference
    percent: Annotated[int, Field(ge=0, le=100)] | None = None
    fraction: Fraction | None = None

    @model_validator(mode="after")
    def _one_of(self) -> HTTPRequestMirrorFilter:
        if self.percent is not None and self.fraction is not None:
            raise field_error(("fraction",), "only one of percent or fraction may be set")
        return self


def check_filter_union(filter_obj: Model, type_: str, fields: dict[str, str]) -> None:
    """`type` names exactly one of the filter's config fields, which must then be set.

    `fields` maps each filter type to its config field (`RequestHeaderModifier` ->
    `requestHeaderModifier`).  Shared by the HTTP and gRPC filters.
    """
    wanted = fields.get(type_)
    for other_type, field in fields.items():
        value = getattr(filter_obj, field)
        if field == wanted and value is None:
            raise field_error((field,), f"required when type is {type_}")
        if field != wanted and value is not None:
            raise field_error(
                (field,), f"must not be set when type is {type_} (it belongs to type {other_type})"
            )


def check_unique_filter_types(types: list[str], repeatable: frozenset[str], where: str = "filters") -> None:
    """Each filter type at most once per rule/backend, except the repeatable ones (mirrors)."""
    seen: set[str] = set()
    for i, t in enumerate(types):
        if t in seen and t not in repeatable:
            raise field_error((where, i, "type"), f"{t} filter cannot be repeated")
        seen.add(t)


def check_unique_rule_names(names: list[str | None]) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name is None:
            continue
        if name in seen:
            raise field_error(("rules", i, "name"), f"duplicate rule name {quote(name)}")
        seen.add(name)


class CommonRouteSpec(Model):
    parentRefs: Annotated[list[ParentReference], Field(max_length=32)] = Field(default_factory=list)


class RouteSpecWithHostnames(CommonRouteSpec):
    hostnames: Annotated[list[Hostname], Field(max_length=16)] = Field(default_factory=list)


class RouteParentStatus(Model):
    parentRef: ParentReference
    controllerName: Annotated[str, Field(min_length=1, max_length=253)]
    conditions: Annotated[list[Condition], Field(min_length=1, max_length=8)]


class RouteStatus(Model):
    """Gateway API route status: conditions per parent (`Accepted`, `ResolvedRefs`)."""

    parents: Annotated[list[RouteParentStatus], Field(max_length=32)] = Field(default_factory=list)


RuleName = SectionName
