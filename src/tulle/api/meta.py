"""What every resource shares: the base model, `metadata`, and `status.conditions`.

Shapes follow Kubernetes (`ObjectMeta`, `metav1.Condition`) so the same YAML works through
`tulle apply` and `kubectl apply`.  Models are frozen: the store and the compiler pass them
around and replace them with `model_copy(update=...)`, never mutate them.

`Resource` applies the scope rules once for all kinds: a namespaced object without a namespace
lands in `default`; a cluster-scoped one must not name a namespace.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_validator

from tulle.api.errors import field_error, quote
from tulle.api.fields import (
    DNS1035_LABEL_RE,
    DNS1035_WHAT,
    Annotations,
    DNSSubdomain,
    Labels,
    Namespace,
    pattern,
)

Scope = Literal["Namespaced", "Cluster"]
Timestamp = Annotated[datetime, Strict(False)]
"""RFC 3339; YAML may hand us a datetime already, JSON a string: both are accepted."""

DEFAULT_NAMESPACE = "default"


class Model(BaseModel):
    """Base of every API model: strict types, unknown fields refused, camelCase as written."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        frozen=True,
        populate_by_name=True,
        validate_default=False,
        use_enum_values=True,
    )


class ObjectMeta(Model):
    """Kubernetes `ObjectMeta`, the fields Tulle uses.  System fields are set by the store."""

    name: DNSSubdomain
    namespace: Namespace | None = None
    labels: Labels = Field(default_factory=dict)
    annotations: Annotations = Field(default_factory=dict)
    resourceVersion: str | None = None
    uid: str | None = None
    generation: Annotated[int, Field(ge=0)] | None = None
    creationTimestamp: Timestamp | None = None


CONDITION_TYPE_RE = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_RE = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


class Condition(Model):
    """Kubernetes `metav1.Condition`: one aspect of an object's state (`Accepted`, `Ready`...)."""

    type: Annotated[str, pattern(CONDITION_TYPE_RE, "a condition type such as Accepted", max_length=316)]
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[
        str, pattern(CONDITION_REASON_RE, "a CamelCase reason such as NoSuchService", max_length=1024)
    ]
    message: Annotated[str, Field(max_length=32768)] = ""
    observedGeneration: Annotated[int, Field(ge=0)] | None = None
    lastTransitionTime: Timestamp


def _check_unique_condition_types(conditions: list[Condition]) -> list[Condition]:
    seen: set[str] = set()
    for i, cond in enumerate(conditions):
        if cond.type in seen:
            raise field_error(("conditions", i, "type"), f"duplicate condition type {quote(cond.type)}")
        seen.add(cond.type)
    return conditions


class Status(Model):
    """Status written by the control plane; users' manifests normally leave it out."""

    observedGeneration: Annotated[int, Field(ge=0)] | None = None
    conditions: Annotated[list[Condition], Field(max_length=8)] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_types(self) -> Status:
        _check_unique_condition_types(self.conditions)
        return self


class Resource(Model):
    """A top-level object: `apiVersion`, `kind`, `metadata`, `spec`, `status`.

    Subclasses declare `apiVersion` and `kind` as single-value literals and are registered with
    `tulle.api.registry.register`, which sets `SCOPE`.  `NAME_RULE` narrows `metadata.name`
    where Kubernetes does (a Service name is a DNS-1035 label).
    """

    SCOPE: ClassVar[Scope] = "Namespaced"
    NAME_RULE: ClassVar[Literal["subdomain", "dns1035"]] = "subdomain"

    metadata: ObjectMeta

    @model_validator(mode="before")
    @classmethod
    def _default_namespace(cls, data: Any) -> Any:
        if cls.SCOPE == "Namespaced" and isinstance(data, dict):
            meta = data.get("metadata")
            if isinstance(meta, dict) and meta.get("namespace") is None:
                data = {**data, "metadata": {**meta, "namespace": DEFAULT_NAMESPACE}}
        return data

    @field_validator("metadata", mode="after")
    @classmethod
    def _scope_and_name(cls, meta: ObjectMeta) -> ObjectMeta:
        # a field validator, not a model validator: runs even when `spec` has errors
        if cls.SCOPE == "Cluster" and meta.namespace is not None:
            raise field_error(("namespace",), f"{cls.__name__} is cluster-scoped and takes no namespace")
        if cls.NAME_RULE == "dns1035" and (
            len(meta.name) > 63 or not re.fullmatch(DNS1035_LABEL_RE, meta.name)
        ):
            raise field_error(
                ("name",), f"must be {DNS1035_WHAT}, at most 63 characters, got {quote(meta.name)}"
            )
        return meta

    @property
    def key(self) -> tuple[str, str, str | None, str]:
        """(apiVersion, kind, namespace, name): what the store indexes by."""
        return (self.api_version, self.kind_name, self.metadata.namespace, self.metadata.name)

    @property
    def api_version(self) -> str:
        return str(getattr(self, "apiVersion"))  # noqa: B009 - declared by each kind

    @property
    def kind_name(self) -> str:
        return str(getattr(self, "kind"))  # noqa: B009 - declared by each kind

    def to_dict(self) -> dict[str, Any]:
        """The resource as a user would write it: camelCase keys, no nulls."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
