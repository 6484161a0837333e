"""`AuthorizationPolicy`: who may call a Service (or a namespace's or the Mesh's workloads), and how.

Istio's shape and semantics (ADR 0031); enforced by the `authorization` compiler plugin on the
inbound side of the target's workloads.  `action` applies to requests matching any rule; a rule
matches when one of its `from` sources and one of its `to` operations match (a missing list
matches everything).  Within a source or operation every set field must match.  DENY wins over
ALLOW; AUDIT only counts; `dryRun` only counts and logs what the policy would refuse.  An ALLOW
policy with no rules allows nothing (deny-all); one with a rule `{}` allows everything.

Identity fields (`identities`, `namespaces`, `serviceAccounts`) match the caller's verified
SPIFFE ID, so only over mTLS.  `workloadLabels` selects callers by the labels of their
Workload: a SPIFFE ID carries no labels, so the compiler resolves the labels to the service
accounts of the sidecar workloads that have them (and says, in the policy's status, when a
service account is shared with a workload the labels do not select).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from tulle.api.errors import field_error, quote
from tulle.api.fields import DNS1123_LABEL_RE, Checked, Labels, Port
from tulle.api.meta import Model
from tulle.api.policy import MESH_TARGET, POLICY_API_VERSION, SERVICE_TARGET, Policy, PolicySpec
from tulle.api.registry import register

NAMESPACE_TARGET = ("", "Namespace")
"""Every workload of the namespace the policy is in (the target's name must be that namespace)."""

_SPIFFE_RE = re.compile(r"^spiffe://[a-z0-9._-]+(/[A-Za-z0-9._~!$&'()+,;=:@%-]+)*$")
_WORKLOAD_ID_RE = re.compile(
    r"^spiffe://[a-z0-9._-]+/ns/[a-z0-9]([-a-z0-9]*[a-z0-9])?/sa/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
"""The only shape a workload certificate's SPIFFE ID has: an exact identity of another shape
could never match a caller, so it is refused, not stored (a prefix may stop anywhere)."""


def _check_identity(value: str) -> str:
    """A workload's SPIFFE ID, `*`, or a SPIFFE ID with one `*` as its last character (a
    prefix)."""
    if value == "*":
        return value
    prefix = value.endswith("*")
    body = value[:-1] if prefix else value
    if "*" in body or not ((prefix and (_SPIFFE_RE.fullmatch(body) or body.startswith("spiffe://")))
                           or (not prefix and _WORKLOAD_ID_RE.fullmatch(body))):
        raise ValueError(
            'must be a SPIFFE ID (spiffe://<trust-domain>/ns/<namespace>/sa/<account>), "*", '
            f"or a SPIFFE ID prefix ending in *; got {quote(value)}"
        )
    return value


def _check_namespace(value: str) -> str:
    if value != "*" and not (len(value) <= 63 and re.fullmatch(DNS1123_LABEL_RE, value)):
        raise ValueError(f'must be a namespace name or "*", got {quote(value)}')
    return value


def _check_path(value: str) -> str:
    if value != "*" and not value.startswith("/"):
        raise ValueError(f'must start with "/" (or be "*"), got {quote(value)}')
    if "*" in value[:-1]:
        raise ValueError(f'"*" may only end a path (a prefix match), got {quote(value)}')
    return value


def _check_method(value: str) -> str:
    if value != "*" and not re.fullmatch(r"[A-Z]+", value):
        raise ValueError(f"must be an upper-case HTTP method such as GET, got {quote(value)}")
    return value


Identity = Annotated[str, Checked(_check_identity, {"maxLength": 2048})]
NamespacePattern = Annotated[str, Checked(_check_namespace, {"maxLength": 63})]
PathPattern = Annotated[str, Checked(_check_path, {"maxLength": 1024})]
Method = Annotated[str, Checked(_check_method, {"maxLength": 32})]


def _check_cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"must be an IP address or CIDR, got {quote(value)}") from None
    return value


def _check_account(value: str) -> str:
    ns, sep, sa = value.partition("/")
    account = r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?"
    if not (sep and re.fullmatch(DNS1123_LABEL_RE, ns) and re.fullmatch(account, sa)):
        raise ValueError(f"must be namespace/serviceaccount, got {quote(value)}")
    return value


def _check_value(value: str) -> str:
    if "*" in value[1:-1]:
        raise ValueError(f'"*" may only start or end a value, got {quote(value)}')
    return value


CIDR = Annotated[str, Checked(_check_cidr, {"maxLength": 64})]
Account = Annotated[str, Checked(_check_account, {"maxLength": 317})]
ValuePattern = Annotated[str, Checked(_check_value, {"maxLength": 1024})]
HeaderName = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]


class HeaderCondition(Model):
    name: HeaderName
    values: Annotated[list[ValuePattern], Field(min_length=1, max_length=64)]


class Source(Model):
    identities: Annotated[list[Identity], Field(min_length=1, max_length=64)] | None = None
    namespaces: Annotated[list[NamespacePattern], Field(min_length=1, max_length=64)] | None = None
    serviceAccounts: Annotated[list[Account], Field(min_length=1, max_length=64)] | None = None
    ipBlocks: Annotated[list[CIDR], Field(min_length=1, max_length=64)] | None = None
    workloadLabels: Labels | None = None
    """Callers whose Workload has every one of these labels (resolved by the compiler to
    their service accounts; needs mTLS like the identity fields)."""

    @model_validator(mode="after")
    def _some(self) -> Source:
        if (self.identities is None and self.namespaces is None and self.serviceAccounts is None
                and self.ipBlocks is None and self.workloadLabels is None):
            raise field_error((), "set identities, namespaces, serviceAccounts, ipBlocks or "
                                  "workloadLabels (an empty source would match everyone)")
        if self.workloadLabels is not None and not self.workloadLabels:
            raise field_error(("workloadLabels",), "name at least one label (an empty selector "
                                                   "would match every workload)")
        return self


class Operation(Model):
    ports: Annotated[list[Port], Field(min_length=1, max_length=64)] | None = None
    paths: Annotated[list[PathPattern], Field(min_length=1, max_length=64)] | None = None
    methods: Annotated[list[Method], Field(min_length=1, max_length=16)] | None = None
    headers: Annotated[list[HeaderCondition], Field(min_length=1, max_length=16)] | None = None

    @model_validator(mode="after")
    def _some(self) -> Operation:
        if self.ports is None and self.paths is None and self.methods is None and self.headers is None:
            raise field_error(
                (), "set ports, paths, methods or headers (an empty operation would match everything)"
            )
        return self


class AuthorizationRule(Model):
    from_: Annotated[list[Source], Field(min_length=1, max_length=64)] | None = Field(
        default=None, alias="from"
    )
    to: Annotated[list[Operation], Field(min_length=1, max_length=64)] | None = None


class AuthorizationPolicySpec(PolicySpec):
    action: Literal["ALLOW", "DENY", "AUDIT"] = "ALLOW"
    rules: Annotated[list[AuthorizationRule], Field(max_length=64)] = Field(default_factory=list)
    dryRun: bool = False
    """Evaluate and count (and log what it would refuse) without refusing anything."""


@register(
    api_version=POLICY_API_VERSION,
    kind="AuthorizationPolicy",
    plural="authorizationpolicies",
    short_names=("authz",),
)
class AuthorizationPolicy(Policy):
    TARGETS: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {MESH_TARGET, SERVICE_TARGET, NAMESPACE_TARGET})

    apiVersion: Literal["policy.tulle.dev/v1alpha1"] = POLICY_API_VERSION
    kind: Literal["AuthorizationPolicy"] = "AuthorizationPolicy"
    spec: AuthorizationPolicySpec
