"""Policy attachment: one mechanism for every policy kind (Gateway API GEP-713 style).

A policy is a namespaced resource whose `spec.targetRef` names what it applies to — the Mesh, a
Service, a route, optionally one section of it (a port or rule name).  A policy kind is one
small module: a spec model deriving from `PolicySpec`, a resource deriving from `Policy` that
declares `TARGETS`, and `@register(...)`.  The target check, the status shape and the registry
entry come from here, so the compiler can treat every kind the same way: find the policies
whose target matches, most specific wins (route rule > route > Service > Mesh), then apply the
kinds in their declared order.
"""

from __future__ import annotations

from typing import ClassVar, Final

from pydantic import model_validator

from tulle.api.errors import field_error, quote
from tulle.api.fields import CORE_GROUPS, Group, Kind, Namespace, ObjectName, SectionName
from tulle.api.gateway.common import GATEWAY_GROUP
from tulle.api.meta import Model, Resource, Status

MESH_GROUP = "mesh.tulle.dev"
POLICY_GROUP = "policy.tulle.dev"
POLICY_API_VERSION: Final = "policy.tulle.dev/v1alpha1"

MESH_TARGET = (MESH_GROUP, "Mesh")
SERVICE_TARGET = ("", "Service")
HTTPROUTE_TARGET = (GATEWAY_GROUP, "HTTPRoute")
GRPCROUTE_TARGET = (GATEWAY_GROUP, "GRPCRoute")
TCPROUTE_TARGET = (GATEWAY_GROUP, "TCPRoute")


class PolicyTargetReference(Model):
    """Gateway API `LocalPolicyTargetReferenceWithSectionName`, plus an optional namespace.

    `namespace` defaults to the policy's own; only a policy in the mesh's system namespace may
    name another (checked by the API server, not here).
    """

    group: Group
    kind: Kind
    name: ObjectName
    namespace: Namespace | None = None
    sectionName: SectionName | None = None

    @property
    def target(self) -> tuple[str, str]:
        """(group, kind) with the core group spelled `""`."""
        return ("" if self.group in CORE_GROUPS else self.group, self.kind)


class PolicySpec(Model):
    targetRef: PolicyTargetReference


class PolicyStatus(Status):
    """`Accepted` (target exists and the spec applies), `Overridden`, ..."""


class Policy(Resource):
    """Base of every policy kind.  Subclasses set `TARGETS` and narrow `spec`."""

    TARGETS: ClassVar[frozenset[tuple[str, str]]] = frozenset()

    spec: PolicySpec
    status: PolicyStatus | None = None

    @model_validator(mode="after")
    def _target(self) -> Policy:
        ref = self.spec.targetRef
        if ref.target not in self.TARGETS:
            allowed = ", ".join(
                f"{kind} ({quote(group)})" if group else f"{kind} (core)"
                for group, kind in sorted(self.TARGETS)
            )
            raise field_error(
                ("spec", "targetRef", "kind"),
                f"{type(self).__name__} cannot target {ref.kind} in group {quote(ref.group)}; "
                f"it may target {allowed}",
            )
        if ref.target == MESH_TARGET and ref.sectionName is not None:
            raise field_error(("spec", "targetRef", "sectionName"), "a Mesh has no sections")
        return self
