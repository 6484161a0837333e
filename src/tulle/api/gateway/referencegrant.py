"""`ReferenceGrant` (`gateway.networking.k8s.io/v1beta1`): which cross-namespace references a
namespace permits.

A route's backendRef to a Service in another namespace resolves only where a ReferenceGrant in
that Service's namespace lists the route's kind and namespace in `from` and the Service (every
Service, or the one named) in `to`; otherwise the compiler leaves that backend's share of the
traffic answering 500 and the route reports `ResolvedRefs=False, RefNotPermitted` (Gateway API).
The grant has no status.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import Field

from tulle.api.fields import Group, Kind, Namespace, ObjectName
from tulle.api.meta import Model, Resource
from tulle.api.registry import register

GATEWAY_V1BETA1: Final = "gateway.networking.k8s.io/v1beta1"


class ReferenceGrantFrom(Model):
    """Who may refer: resources of `group`/`kind` in `namespace`."""

    group: Group
    kind: Kind
    namespace: Namespace


class ReferenceGrantTo(Model):
    """What they may refer to in this namespace: every `group`/`kind`, or the one named."""

    group: Group
    kind: Kind
    name: ObjectName | None = None


class ReferenceGrantSpec(Model):
    from_: Annotated[list[ReferenceGrantFrom], Field(alias="from", min_length=1, max_length=16)]
    to: Annotated[list[ReferenceGrantTo], Field(min_length=1, max_length=16)]


@register(api_version=GATEWAY_V1BETA1, kind="ReferenceGrant", plural="referencegrants")
class ReferenceGrant(Resource):
    apiVersion: Literal["gateway.networking.k8s.io/v1beta1"] = GATEWAY_V1BETA1
    kind: Literal["ReferenceGrant"] = "ReferenceGrant"
    spec: ReferenceGrantSpec
