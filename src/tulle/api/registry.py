"""The kind registry: which (apiVersion, kind) is which model, and how the CLI names it.

Every kind registers itself with `@register(...)` in its own module; `tulle.api.builtin_kinds` imports
them all, and this module loads it on first use, so `parse` knows every built-in kind without
an import cycle.  A policy kind registers the same way and additionally declares what it may
target (see `tulle.api.policy`).

A kind may be served under several apiVersions with one schema (`also_served`): Gateway API's
`v1beta1` HTTPRoute, `v1alpha2` GRPCRoute, Linkerd's `policy.linkerd.io` HTTPRoute.  All of
them are one kind here (one store key, one `KindInfo`); an object keeps the apiVersion it was
written in (ADR 0024).

Names follow kubectl: a kind is found by its kind (any case), its singular, its plural, one of
its short names, or `plural.group` when two groups share a plural.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic

from tulle.api.errors import FieldError, ValidationError, from_pydantic, quote
from tulle.api.meta import Resource, Scope


@dataclass(frozen=True, slots=True)
class KindInfo:
    api_version: str
    kind: str
    model: type[Resource]
    scope: Scope
    plural: str
    short_names: tuple[str, ...] = ()
    policy_targets: frozenset[tuple[str, str]] | None = None
    """For policy kinds: the (group, kind) pairs `spec.targetRef` may name."""
    also_served: tuple[str, ...] = ()
    """Other apiVersions accepted with the same schema; objects keep the one they were written in."""

    @property
    def api_versions(self) -> tuple[str, ...]:
        """Every apiVersion this kind is accepted and served as, the preferred one first."""
        return (self.api_version, *self.also_served)

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def namespaced(self) -> bool:
        return self.scope == "Namespaced"

    @property
    def is_policy(self) -> bool:
        return self.policy_targets is not None


_KINDS: dict[tuple[str, str], KindInfo] = {}
_loaded = False

R = TypeVar("R", bound=type[Resource])


def register(
    *,
    api_version: str,
    kind: str,
    plural: str,
    scope: Scope = "Namespaced",
    short_names: tuple[str, ...] = (),
    also_served: tuple[str, ...] = (),
) -> Callable[[R], R]:
    """Class decorator: make `model` the schema of (`api_version`, `kind`), and of (`v`,
    `kind`) for every `v` in `also_served`."""

    def deco(model: R) -> R:
        model.SCOPE = scope
        targets: frozenset[tuple[str, str]] | None = getattr(model, "TARGETS", None)
        info = KindInfo(api_version, kind, model, scope, plural, short_names, targets, also_served)
        for version in info.api_versions:
            key = (version, kind)
            if key in _KINDS and _KINDS[key].model is not model:
                raise RuntimeError(f"kind {kind} in {version} registered twice")
            _KINDS[key] = info
        return model

    return deco


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        importlib.import_module("tulle.api.builtin_kinds")


def kinds() -> tuple[KindInfo, ...]:
    """Every registered kind, in a stable order (group, then kind)."""
    _ensure_loaded()
    return tuple(sorted(_unique(), key=lambda k: (k.group, k.kind)))


def _unique() -> list[KindInfo]:
    """Each kind once (a kind served under several apiVersions has one key per version)."""
    return list({id(info): info for info in _KINDS.values()}.values())


def lookup(api_version: str, kind: str) -> KindInfo:
    """The kind registered for (`api_version`, `kind`); `KeyError` when there is none."""
    _ensure_loaded()
    return _KINDS[(api_version, kind)]


def resolve(name: str) -> KindInfo:
    """A kind from the name a person types (`httproutes`, `HTTPRoute`, `svc`, `services.mesh.tulle.dev`).

    Raises `KeyError` with the candidates when the name is unknown or ambiguous.
    """
    _ensure_loaded()
    wanted = name.strip().lower()
    base, _, group = wanted.partition(".")
    matches = [
        info
        for info in _unique()
        if base in (info.kind.lower(), info.singular, info.plural, *info.short_names)
        and (not group or info.group == group)
    ]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise KeyError(f"unknown resource type {quote(name)}")
    options = ", ".join(sorted(f"{m.plural}.{m.group}" for m in matches))
    raise KeyError(f"resource type {quote(name)} is ambiguous: {options}")


def parse(obj: Any) -> Resource:
    """Validate one document into its model; `ValidationError` lists every problem with its path."""
    if not isinstance(obj, Mapping):
        raise ValidationError([FieldError("", f"must be a mapping (an object), got {type(obj).__name__}")])
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    errors: list[FieldError] = []
    if not isinstance(api_version, str) or not api_version:
        errors.append(FieldError("apiVersion", "required" if api_version is None else "must be a string"))
    if not isinstance(kind, str) or not kind:
        errors.append(FieldError("kind", "required" if kind is None else "must be a string"))
    if errors:
        raise ValidationError(errors)
    assert isinstance(api_version, str) and isinstance(kind, str)
    try:
        info = lookup(api_version, kind)
    except KeyError:
        raise ValidationError([FieldError("kind", _unknown_kind(api_version, kind))]) from None
    try:
        return info.model.model_validate(dict(obj))
    except pydantic.ValidationError as exc:
        raise ValidationError(from_pydantic(exc)) from None


def _unknown_kind(api_version: str, kind: str) -> str:
    same_kind = sorted(v for (v, k) in _KINDS if k == kind)
    if same_kind:
        return f"kind {kind} is served as apiVersion {' or '.join(same_kind)}, not {quote(api_version)}"
    known = ", ".join(sorted({k.kind for k in _KINDS.values()}))
    return f"unknown kind {quote(kind)} (apiVersion {quote(api_version)}); known kinds: {known}"
