"""`Service` (universal mode): a stable name and virtual IP in front of selected workloads.

Kubernetes Service semantics, the fields a mesh needs: ports with `targetPort` (a number or a
workload port name) and `appProtocol`, a `selector` over workload labels, and `ipFamilyPolicy`.
The control plane allocates `status.virtualIP` (and `status.virtualIPv6` for a dual-stack
policy).  A Gateway API `parentRef`/`backendRef` to the core-group kind `Service` resolves to
this object in universal mode and to the Kubernetes Service on Kubernetes.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from tulle.api.errors import field_error
from tulle.api.fields import IntOrPortName, IPAddress, Labels, Port, PortName, Protocol, QualifiedName
from tulle.api.mesh import MESH_API_VERSION
from tulle.api.meta import Model, Resource, Status
from tulle.api.registry import register
from tulle.api.workload import WorkloadPort, check_ports


class ServicePort(Model):
    name: PortName | None = None
    """Required when the Service has more than one port."""
    port: Port
    targetPort: IntOrPortName | None = None
    """Workload port (number or name); defaults to `port`."""
    protocol: Protocol = "TCP"
    appProtocol: QualifiedName | None = None


DUAL_STACK = frozenset({"PreferDualStack", "RequireDualStack"})
"""The `ipFamilyPolicy` values that give a Service an IPv6 virtual IP as well."""


class ServiceSpec(Model):
    ports: Annotated[list[ServicePort], Field(min_length=1, max_length=64)]
    selector: Labels = Field(default_factory=dict)
    """Workloads whose labels include all of these belong to the Service; empty selects none."""
    ipFamilyPolicy: Literal["SingleStack", "PreferDualStack", "RequireDualStack"] = "SingleStack"
    """Kubernetes' field: `SingleStack` (the default) gives the Service one virtual IP, IPv4;
    either dual-stack value gives it an IPv6 one as well (`status.virtualIPv6`), which mesh DNS
    answers AAAA queries with and a dual-stack pod's sidecar routes like the IPv4 one (ADR
    0088).  The control plane can always allocate both, so the two behave alike."""

    @model_validator(mode="after")
    def _ports(self) -> ServiceSpec:
        if len(self.ports) > 1:
            for i, p in enumerate(self.ports):
                if p.name is None:
                    raise field_error(("ports", i, "name"), "required when a Service has more than one port")
        # same uniqueness rules as workload ports
        check_ports([WorkloadPort(name=p.name, port=p.port, protocol=p.protocol) for p in self.ports])
        return self


class ServiceStatus(Status):
    virtualIP: IPAddress | None = None
    """Allocated by the control plane; stable for the Service's lifetime."""
    virtualIPv6: IPAddress | None = None
    """Allocated by the control plane while `spec.ipFamilyPolicy` is dual-stack; released
    when it returns to `SingleStack`."""


@register(api_version=MESH_API_VERSION, kind="Service", plural="services", short_names=("svc",))
class Service(Resource):
    NAME_RULE: ClassVar[Literal["subdomain", "dns1035"]] = "dns1035"

    apiVersion: Literal["mesh.tulle.dev/v1alpha1"] = MESH_API_VERSION
    kind: Literal["Service"] = "Service"
    spec: ServiceSpec
    status: ServiceStatus | None = None
