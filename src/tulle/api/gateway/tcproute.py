"""`TCPRoute` (`gateway.networking.k8s.io/v1alpha2`, as upstream still serves it): L4 routing.

A TCP connection to the parent Service's port goes to one of the weighted backends; nothing in
the stream is inspected.  The apiVersion stays `v1alpha2` so manifests move between meshes.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from tulle.api.gateway.common import (
    GATEWAY_V1ALPHA2,
    BackendRef,
    CommonRouteSpec,
    RouteStatus,
    RuleName,
    check_unique_rule_names,
)
from tulle.api.meta import Model, Resource
from tulle.api.registry import register


class TCPRouteRule(Model):
    name: RuleName | None = None
    backendRefs: Annotated[list[BackendRef], Field(min_length=1, max_length=16)]


class TCPRouteSpec(CommonRouteSpec):
    rules: Annotated[list[TCPRouteRule], Field(min_length=1, max_length=16)]

    @model_validator(mode="after")
    def _names(self) -> TCPRouteSpec:
        check_unique_rule_names([r.name for r in self.rules])
        return self


@register(api_version=GATEWAY_V1ALPHA2, kind="TCPRoute", plural="tcproutes")
class TCPRoute(Resource):
    apiVersion: Literal["gateway.networking.k8s.io/v1alpha2"] = GATEWAY_V1ALPHA2
    kind: Literal["TCPRoute"] = "TCPRoute"
    spec: TCPRouteSpec
    status: RouteStatus | None = None
