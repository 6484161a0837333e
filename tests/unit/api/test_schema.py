"""JSON Schema per kind, post-processed into Kubernetes structural schemas."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from tulle.api import KindInfo, kinds, parse
from tulle.api.schema import NotStructuralError, crd, json_schema, openapi_schema, structural

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "resources"


def _examples() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for f in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            out.setdefault(doc["kind"], doc)
    return out


def _nodes(schema: Any) -> list[dict[str, Any]]:
    """Every schema node (not every dict: `properties` maps names to nodes)."""
    out = [schema]
    for name, sub in schema.get("properties", {}).items():
        assert isinstance(sub, dict), name
        out += _nodes(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            out += _nodes(schema[key])
    return out


@pytest.mark.parametrize("info", kinds(), ids=lambda k: k.kind)
def test_structural(info: KindInfo) -> None:
    raw = json.dumps(json_schema(info))
    assert "$ref" in raw or "anyOf" in raw  # the post-processing has something to do
    schema = openapi_schema(info)
    text = json.dumps(schema)
    for banned in ('"$ref"', '"$defs"', '"const"', '"title"', '"allOf"', '"oneOf"', '{"type": "null"}'):
        assert banned not in text, banned
    for node in _nodes(schema):
        assert "type" in node or node.get("x-kubernetes-int-or-string"), node
        assert not ("properties" in node and "additionalProperties" in node), node
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), node
    assert schema["properties"]["metadata"] == {"type": "object"}


@pytest.mark.parametrize("info", kinds(), ids=lambda k: k.kind)
def test_schema_accepts_the_example_and_rejects_a_bad_one(info: KindInfo) -> None:
    example = _examples()[info.kind]
    validator = jsonschema.Draft4Validator(openapi_schema(info))
    validator.validate(example)
    validator.validate(parse(example).to_dict())  # the normalised form too (defaults filled in)
    bad = json.loads(json.dumps(example))
    bad["spec"] = {**bad["spec"], "targetRef": 7} if info.is_policy else 7
    if info.kind == "Mesh":
        bad["spec"] = {"mtls": {"mode": "SOMETIMES"}}
    assert list(validator.iter_errors(bad)), info.kind


def test_nullable_and_int_or_string() -> None:
    svc = openapi_schema(next(k for k in kinds() if k.kind == "Service"))
    port = svc["properties"]["spec"]["properties"]["ports"]["items"]["properties"]
    assert port["name"]["nullable"] is True and port["name"]["type"] == "string"
    assert port["targetPort"]["x-kubernetes-int-or-string"] is True
    assert svc["properties"]["status"]["nullable"] is True


def test_rewrites() -> None:
    raw = {
        "$defs": {
            "Inner": {
                "type": "object",
                "title": "Inner",
                "properties": {"k": {"const": "x"}},
                "additionalProperties": False,
            }
        },
        "type": "object",
        "properties": {
            "a": {
                "anyOf": [{"$ref": "#/$defs/Inner"}, {"type": "null"}],
                "default": None,
                "description": "d",
            },
            "b": {"type": "integer", "exclusiveMinimum": 0},
        },
    }
    assert structural(raw) == {
        "type": "object",
        "properties": {
            "a": {
                "type": "object",
                "properties": {"k": {"enum": ["x"], "type": "string"}},
                "description": "d",
                "nullable": True,
            },
            "b": {"type": "integer", "minimum": 0, "exclusiveMinimum": True},
        },
    }
    with pytest.raises(NotStructuralError):
        structural({"anyOf": [{"type": "integer"}, {"type": "boolean"}]})
    with pytest.raises(NotStructuralError):
        structural(
            {
                "$defs": {"N": {"type": "object", "properties": {"n": {"$ref": "#/$defs/N"}}}},
                "$ref": "#/$defs/N",
            }
        )


def test_crd_shape() -> None:
    info = next(k for k in kinds() if k.kind == "HTTPRoute")
    doc = crd(info)
    assert doc["metadata"]["name"] == "httproutes.gateway.networking.k8s.io"
    assert doc["spec"]["scope"] == "Namespaced"
    assert doc["spec"]["versions"][0]["name"] == "v1"
    # v1beta1 served with the same schema, v1 stored; Linkerd's group is not in our CRD
    assert [(v["name"], v["served"], v["storage"]) for v in doc["spec"]["versions"]] == [
        ("v1", True, True), ("v1beta1", True, False)]
