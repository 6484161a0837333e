"""`GRPCRoute` (`gateway.networking.k8s.io/v1`): routing gRPC calls by service and method.

A gRPC call is an HTTP/2 request to `/<service>/<method>`; a match names either or both.
Filters are the header modifiers and mirroring (gRPC has no redirects or rewrites here).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from tulle.api.errors import field_error, quote
from tulle.api.fields import HeaderName
from tulle.api.gateway.common import (
    GATEWAY_V1,
    GRPCROUTE_VERSIONS,
    BackendRef,
    GRPCRouteVersion,
    HTTPHeaderFilter,
    HTTPRequestMirrorFilter,
    LocalObjectReference,
    RouteSpecWithHostnames,
    RouteStatus,
    RuleName,
    check_filter_union,
    check_unique_filter_types,
    check_unique_rule_names,
)
from tulle.api.gateway.session import SessionPersistence
from tulle.api.meta import Model, Resource
from tulle.api.registry import register

_SERVICE_RE = re.compile(r"^\.?[A-Za-z_][A-Za-z_0-9]*(\.[A-Za-z_][A-Za-z_0-9]*)*$")
_METHOD_RE = re.compile(r"^[A-Za-z_][A-Za-z_0-9]*$")


class GRPCMethodMatch(Model):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    service: Annotated[str, Field(max_length=1024)] | None = None
    """Fully qualified service name, `package.Service`."""
    method: Annotated[str, Field(max_length=1024)] | None = None

    @model_validator(mode="after")
    def _check(self) -> GRPCMethodMatch:
        if self.service is None and self.method is None:
            raise field_error((), "one or both of service and method must be set")
        for field, value, regex in (
            ("service", self.service, _SERVICE_RE),
            ("method", self.method, _METHOD_RE),
        ):
            if value is None:
                continue
            if self.type == "Exact" and not regex.match(value):
                what = (
                    "a fully qualified service name (package.Service)"
                    if field == "service"
                    else "a method name"
                )
                raise field_error((field,), f"must be {what}, got {quote(value)}")
            if self.type == "RegularExpression":
                try:
                    re.compile(value)
                except re.error as exc:
                    raise field_error((field,), f"invalid regular expression: {exc}") from None
        return self


class GRPCHeaderMatch(Model):
    type: Literal["Exact", "RegularExpression"] = "Exact"
    name: HeaderName
    value: Annotated[str, Field(min_length=1, max_length=4096)]


class GRPCRouteMatch(Model):
    method: GRPCMethodMatch | None = None
    headers: Annotated[list[GRPCHeaderMatch], Field(max_length=16)] | None = None

    @model_validator(mode="after")
    def _unique(self) -> GRPCRouteMatch:
        seen: set[str] = set()
        for i, h in enumerate(self.headers or []):
            if h.name in seen:
                raise field_error(("headers", i, "name"), f"{quote(h.name)} is matched more than once")
            seen.add(h.name)
        return self


GRPC_FILTER_FIELDS = {
    "RequestHeaderModifier": "requestHeaderModifier",
    "ResponseHeaderModifier": "responseHeaderModifier",
    "RequestMirror": "requestMirror",
    "ExtensionRef": "extensionRef",
}


class GRPCRouteFilter(Model):
    type: Literal["RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "ExtensionRef"]
    requestHeaderModifier: HTTPHeaderFilter | None = None
    responseHeaderModifier: HTTPHeaderFilter | None = None
    requestMirror: HTTPRequestMirrorFilter | None = None
    extensionRef: LocalObjectReference | None = None

    @model_validator(mode="after")
    def _union(self) -> GRPCRouteFilter:
        check_filter_union(self, self.type, GRPC_FILTER_FIELDS)
        return self


_REPEATABLE = frozenset({"RequestMirror", "ExtensionRef"})


class GRPCBackendRef(BackendRef):
    filters: Annotated[list[GRPCRouteFilter], Field(max_length=16)] | None = None

    @model_validator(mode="after")
    def _filters(self) -> GRPCBackendRef:
        check_unique_filter_types([f.type for f in self.filters or []], _REPEATABLE)
        return self


class GRPCRouteRule(Model):
    name: RuleName | None = None
    matches: Annotated[list[GRPCRouteMatch], Field(max_length=8)] | None = None
    """None or empty matches every call."""
    filters: Annotated[list[GRPCRouteFilter], Field(max_length=16)] | None = None
    backendRefs: Annotated[list[GRPCBackendRef], Field(max_length=16)] = Field(default_factory=list)
    sessionPersistence: SessionPersistence | None = None

    @model_validator(mode="after")
    def _filters(self) -> GRPCRouteRule:
        check_unique_filter_types([f.type for f in self.filters or []], _REPEATABLE)
        return self


class GRPCRouteSpec(RouteSpecWithHostnames):
    rules: Annotated[list[GRPCRouteRule], Field(max_length=16)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _route(self) -> GRPCRouteSpec:
        total = sum(len(r.matches or ()) for r in self.rules)
        if total > 128:
            raise field_error(("rules",), f"must have at most 128 matches in all, got {total}")
        check_unique_rule_names([r.name for r in self.rules])
        return self


@register(api_version=GATEWAY_V1, kind="GRPCRoute", plural="grpcroutes",
          also_served=GRPCROUTE_VERSIONS[1:])
class GRPCRoute(Resource):
    apiVersion: GRPCRouteVersion = GATEWAY_V1
    kind: Literal["GRPCRoute"] = "GRPCRoute"
    spec: GRPCRouteSpec
    status: RouteStatus | None = None
