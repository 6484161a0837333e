"""The write rules every backend shares, as pure functions of (stored object, new revision).

A backend opens its transaction, bumps its revision, reads the stored object and calls one
`Mutation`; the mutation either raises (`NotFoundError`, `AlreadyExistsError`, `ConflictError`
— the backend rolls back and the revision is not consumed) or returns the `Change` to write:
the new row and the change-log entry.  Keeping these rules here is what makes the three
backends behave identically.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias

import msgspec

from tulle.controlplane.store.errors import (
    AlreadyExistsError,
    ConflictError,
    InvalidObjectError,
    NotFoundError,
)
from tulle.controlplane.store.protocol import EventType, Obj

Key: TypeAlias = tuple[str, str, str]
"""(kind, namespace, name); namespace is "" for cluster-scoped objects."""

_encoder = msgspec.json.Encoder()


def encode(obj: Obj) -> str:
    """JSON text of an object (`InvalidObjectError` if it is not JSON-compatible)."""
    try:
        return _encoder.encode(obj).decode()
    except (TypeError, msgspec.EncodeError) as e:
        raise InvalidObjectError(f"object is not JSON-compatible: {e}") from e


def decode(text: str | bytes) -> Obj:
    value = msgspec.json.decode(text)
    if not isinstance(value, dict):  # pragma: no cover - we only ever store dicts
        raise InvalidObjectError("stored value is not an object")
    return value


def copy_of(obj: Obj) -> Obj:
    """A deep, JSON-normalised copy (what every backend hands out: never the caller's dict)."""
    return decode(encode(obj))


def make_key(kind: str, namespace: str | None, name: str) -> Key:
    return (kind, namespace or "", name)


def key_of(obj: Obj) -> Key:
    """The store key of an object; `InvalidObjectError` if kind or metadata.name is missing."""
    kind = obj.get("kind")
    meta = obj.get("metadata")
    if not isinstance(kind, str) or not kind:
        raise InvalidObjectError("object has no kind")
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
        raise InvalidObjectError("object has no metadata.name")
    namespace = meta.get("namespace")
    if namespace is not None and not isinstance(namespace, str):
        raise InvalidObjectError("metadata.namespace must be a string")
    return make_key(kind, namespace, meta["name"])


def describe(key: Key) -> str:
    kind, namespace, name = key
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


def resource_version(obj: Obj) -> str | None:
    rv = (obj.get("metadata") or {}).get("resourceVersion")
    return None if rv is None else str(rv)


@dataclass(frozen=True, slots=True)
class Change:
    """What one write does: the event, and the object (the row to keep, or the one removed)."""

    type: EventType
    key: Key
    object: Obj


Mutation: TypeAlias = Callable[[Obj | None, int], Change]
"""(stored object or None, the write's revision) -> Change; raises to refuse the write."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_version(key: Key, current: Obj, given: str | None) -> None:
    stored = resource_version(current)
    if given != stored:
        wanted = "no resourceVersion" if given is None else f"resourceVersion {given}"
        raise ConflictError(
            f"{describe(key)}: {wanted} does not match the current resourceVersion {stored}; "
            "re-read and retry",
            current=stored,
        )


def creating(obj: Obj, clock: Callable[[], str] = _now) -> tuple[Key, Mutation]:
    """Create: refuse if present; server-owned metadata assigned, status kept as given."""
    key = key_of(obj)
    new = copy_of(obj)

    def mutate(current: Obj | None, revision: int) -> Change:
        if current is not None:
            raise AlreadyExistsError(f"{describe(key)} already exists")
        meta: dict[str, Any] = new["metadata"]
        if not meta.get("namespace"):
            meta.pop("namespace", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = clock()
        meta["generation"] = 1
        meta["resourceVersion"] = str(revision)
        return Change("ADDED", key, new)

    return key, mutate


def updating(obj: Obj) -> tuple[Key, Mutation]:
    """Update: version-checked; status, uid and creationTimestamp kept; generation bumped only
    when spec changed."""
    key = key_of(obj)
    new = copy_of(obj)
    given = resource_version(obj)

    def mutate(current: Obj | None, revision: int) -> Change:
        if current is None:
            raise NotFoundError(f"{describe(key)} not found")
        _check_version(key, current, given)
        old_meta = current["metadata"]
        meta: dict[str, Any] = new["metadata"]
        if not meta.get("namespace"):
            meta.pop("namespace", None)
        meta["uid"] = old_meta["uid"]
        meta["creationTimestamp"] = old_meta["creationTimestamp"]
        generation = int(old_meta.get("generation", 1))
        meta["generation"] = generation + 1 if new.get("spec") != current.get("spec") else generation
        meta["resourceVersion"] = str(revision)
        new.pop("status", None)
        if "status" in current:
            new["status"] = current["status"]
        return Change("MODIFIED", key, new)

    return key, mutate


def updating_status(obj: Obj) -> tuple[Key, Mutation]:
    """Status update: version-checked; only `status` changes (besides resourceVersion)."""
    key = key_of(obj)
    given = resource_version(obj)
    status = copy_of({"s": obj["status"]})["s"] if "status" in obj else None
    has_status = "status" in obj

    def mutate(current: Obj | None, revision: int) -> Change:
        if current is None:
            raise NotFoundError(f"{describe(key)} not found")
        _check_version(key, current, given)
        new = current  # the backend's own decoded copy
        new.pop("status", None)
        if has_status:
            new["status"] = status
        new["metadata"]["resourceVersion"] = str(revision)
        return Change("MODIFIED", key, new)

    return key, mutate


def deleting(key: Key, precondition: str | None) -> Mutation:
    """Delete: refuse if absent or (with a precondition) if the version moved on."""

    def mutate(current: Obj | None, revision: int) -> Change:
        if current is None:
            raise NotFoundError(f"{describe(key)} not found")
        if precondition is not None:
            _check_version(key, current, str(precondition))
        current["metadata"]["resourceVersion"] = str(revision)
        return Change("DELETED", key, current)

    return mutate
