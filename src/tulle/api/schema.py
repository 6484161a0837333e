"""JSON Schema for every kind, post-processed into Kubernetes *structural* schemas.

pydantic emits JSON Schema 2020-12 with `$ref`/`$defs`, `anyOf [X, null]` for optional fields,
`const` for single-value literals and `additionalProperties: false` for closed objects.  A CRD's
`openAPIV3Schema` must be structural: no references, a `type` on every node, `nullable` instead
of a null branch, `enum` instead of `const`, and no `additionalProperties` beside `properties`
(the API server prunes unknown fields instead).  `structural()` performs exactly those rewrites
and fails loudly on anything it cannot express, so a model change that would break the CRDs
breaks a unit test first.
"""

from __future__ import annotations

from typing import Any

from tulle.api.registry import KindInfo

_DROP = frozenset({"title", "$defs", "$schema", "discriminator", "examples"})


class NotStructuralError(ValueError):
    """The model uses a construct a structural schema cannot express."""


def json_schema(info: KindInfo) -> dict[str, Any]:
    """The model's JSON Schema as pydantic generates it (with `$ref`s), field names as written."""
    schema: dict[str, Any] = info.model.model_json_schema(by_alias=True, mode="validation")
    return schema


def structural(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with every `$ref` inlined and rewritten into a Kubernetes structural schema."""
    defs: dict[str, Any] = schema.get("$defs", {})
    out: dict[str, Any] = _walk(schema, defs, ())
    return out


def _deref(
    node: dict[str, Any], defs: dict[str, Any], stack: tuple[str, ...]
) -> tuple[dict[str, Any], tuple[str, ...]]:
    ref = node["$ref"]
    name = ref.rsplit("/", 1)[-1]
    if not ref.startswith("#/$defs/") or name not in defs:
        raise NotStructuralError(f"unresolvable $ref {ref}")
    if name in stack:
        raise NotStructuralError(f"recursive type {name} cannot be inlined")
    siblings = {k: v for k, v in node.items() if k != "$ref"}
    return {**defs[name], **siblings}, (*stack, name)


def _walk(node: Any, defs: dict[str, Any], stack: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_walk(x, defs, stack) for x in node]
    if not isinstance(node, dict):
        return node
    while "$ref" in node:
        node, stack = _deref(node, defs, stack)
    node = dict(node)
    for key in ("allOf", "oneOf"):
        if key in node:
            members = node.pop(key)
            if len(members) != 1:
                raise NotStructuralError(f"{key} with {len(members)} members")
            inner = members[0]
            while isinstance(inner, dict) and "$ref" in inner:
                inner, stack = _deref(inner, defs, stack)
            node = {**inner, **node}
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        members = node.pop("anyOf")
        rest = [m for m in members if m != {"type": "null"}]
        if len(rest) != 1:
            raise NotStructuralError(f"anyOf with {len(rest)} non-null members")
        inner = rest[0]
        while isinstance(inner, dict) and "$ref" in inner:
            inner, stack = _deref(inner, defs, stack)
        node = {**inner, **node}
        if len(rest) != len(members):
            node["nullable"] = True
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "default" and value is None:
            continue
        elif key == "additionalProperties" and isinstance(value, bool):
            continue  # closed objects: the API server prunes unknown fields
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            out[key] = {name: _walk(sub, defs, stack) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _walk(value, defs, stack)
        else:
            out[key] = value
    if "type" not in out and not out.get("x-kubernetes-int-or-string"):
        if "properties" in out:
            out["type"] = "object"
        elif "enum" in out and all(isinstance(v, str) for v in out["enum"]):
            out["type"] = "string"
        else:
            raise NotStructuralError(f"a node without a type: {sorted(out)}")
    return out


def openapi_schema(info: KindInfo) -> dict[str, Any]:
    """The structural `openAPIV3Schema` of a kind, ready for its CRD."""
    schema = structural(json_schema(info))
    props = schema.setdefault("properties", {})
    # Kubernetes owns the envelope: metadata may not be constrained beyond name/generateName,
    # and apiVersion/kind are plain strings there.
    props["apiVersion"] = {"type": "string", "description": f"{info.api_version}"}
    props["kind"] = {"type": "string", "description": info.kind}
    props["metadata"] = {"type": "object"}
    schema["required"] = sorted(set(schema.get("required", [])) - {"apiVersion", "kind"})
    schema.pop("description", None)
    schema["description"] = (info.model.__doc__ or info.kind).strip().splitlines()[0]
    return schema


def crd(info: KindInfo) -> dict[str, Any]:
    """A minimal CustomResourceDefinition for a kind (the Kubernetes issue installs these)."""
    names: dict[str, Any] = {"plural": info.plural, "singular": info.singular, "kind": info.kind}
    if info.short_names:
        names["shortNames"] = list(info.short_names)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{info.plural}.{info.group}"},
        "spec": {
            "group": info.group,
            "names": names,
            "scope": info.scope,
            "versions": [
                {
                    "name": version.rpartition("/")[2],
                    "served": True,
                    "storage": version == info.api_version,
                    "schema": {"openAPIV3Schema": openapi_schema(info)},
                    "subresources": {"status": {}},
                }
                # other groups' versions (Linkerd's) are their own CRDs, not ours to install
                for version in info.api_versions
                if version.rpartition("/")[0] == info.group
            ],
        },
    }
