"""Loading YAML/JSON: every document validated, every error kept with its file and index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tulle.api import ValidationError, load_path, load_text

GOOD_MESH = """\
apiVersion: mesh.tulle.dev/v1alpha1
kind: Mesh
metadata:
  name: default
"""
GOOD_SVC = """\
apiVersion: mesh.tulle.dev/v1alpha1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  ports: [{port: 80}]
"""
BAD_ROUTE = """\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  rules:
    - matches:
        - path: {value: /ok}
        - path: {value: nope}
      backendRefs:
        - name: web
"""


def test_mixed_good_and_bad_documents_report_every_error() -> None:
    text = "---\n".join([GOOD_MESH, BAD_ROUTE, GOOD_SVC, "apiVersion: x/v1\nkind: Pod\n"])
    result = load_text(text, "app.yaml")
    assert not result.ok
    assert [d.index for d in result.documents] == [0, 1, 2, 3]
    assert [r.kind_name for r in result.resources] == ["Mesh", "Service"]
    assert [(d.index, [(e.path, e.message) for e in d.errors]) for d in result.failed] == [
        (
            1,
            [
                ("spec.rules[0].matches[1].path.value", 'must start with "/"'),
                ("spec.rules[0].backendRefs[0].port", "required when referring to a Service"),
            ],
        ),
        (3, [("kind", 'unknown kind "Pod" (apiVersion "x/v1"); known kinds: ' + _known())]),
    ]
    lines = result.error_lines()
    assert lines[0] == (
        'app.yaml, document 1 (HTTPRoute shop/web): spec.rules[0].matches[1].path.value: must start with "/"'
    )
    with pytest.raises(ValidationError) as info:
        result.raise_for_errors()
    assert len(info.value.errors) == 3


def _known() -> str:
    return ("AuthorizationPolicy, CircuitBreakerPolicy, FaultInjectionPolicy, GRPCRoute, "
            "HTTPRoute, HealthCheckPolicy, LoadBalancingPolicy, Mesh, MutualTLSPolicy, "
            "OutlierDetectionPolicy, RateLimitPolicy, ReferenceGrant, RetryPolicy, Service, "
            "TCPRoute, TimeoutPolicy, Workload")


def test_empty_documents_and_comments_are_skipped() -> None:
    result = load_text("---\n# an empty document\n---\n" + GOOD_MESH + "---\n")
    assert result.ok
    assert [(d.source, d.index) for d in result.documents] == [("<stdin>", 1)]
    result.raise_for_errors()  # no error: does not raise


def test_yaml_syntax_error_names_the_document_and_line() -> None:
    result = load_text(GOOD_MESH + "---\nkind: [unclosed\n", "x.yaml")
    assert [r.kind_name for r in result.resources] == ["Mesh"]
    [bad] = result.failed
    assert bad.index == 1
    [err] = bad.errors
    assert err.path == ""
    assert (
        err.message.startswith("invalid YAML:") and "(line 7, column 1)" in err.message
    )  # where the parser gave up


def test_a_list_document_contributes_its_items() -> None:
    items = [
        {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh", "metadata": {"name": "a"}},
        {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh", "metadata": {"name": "B"}},
    ]
    doc = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    bad = load_text(doc, "l.json", json_only=True)
    assert [(e.path, e.message.split(" (")[0]) for e in bad.failed[0].errors] == [
        ("items[1].metadata.name", "must be a DNS-1123 subdomain")
    ]
    items[1]["metadata"] = {"name": "b"}
    good = load_text(json.dumps({"kind": "List", "items": items}), json_only=True)
    assert [r.metadata.name for r in good.resources] == ["a", "b"]


def test_load_path_reads_files_and_directories(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD_MESH + "---\n" + BAD_ROUTE)
    (tmp_path / "b.json").write_text(json.dumps({"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh"}))
    (tmp_path / "c.json").write_text("{not json")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.yml").write_text(GOOD_SVC)

    flat = load_path(tmp_path)
    assert [(Path(d.source).name, d.index, d.ok) for d in flat.documents] == [
        ("a.yaml", 0, True),
        ("a.yaml", 1, False),
        ("b.json", 0, False),
        ("c.json", 0, False),
    ]
    assert flat.documents[2].errors[0].path == "metadata"
    assert flat.documents[3].errors[0].message.startswith("invalid JSON: Expecting property name")
    deep = load_path(tmp_path, recursive=True)
    assert [Path(d.source).name for d in deep.documents][-1] == "d.yml"
    single = load_path(tmp_path / "sub" / "d.yml")
    assert single.ok and single.resources[0].kind_name == "Service"
    missing = load_path(tmp_path / "nope.yaml")
    assert missing.failed[0].errors[0].message.startswith("cannot read:")
