"""Bounded YAML: an alias bomb, a recursive alias, deep nesting, too many documents or bytes
are refused in milliseconds with a clear error; ordinary input loads as before."""

from __future__ import annotations

import time

import pytest
import yaml

from tulle.api import load_text, safeyaml
from tulle.api.safeyaml import YamlLimitError, YamlLimits


def billion_laughs(levels: int = 10) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return ("apiVersion: mesh.tulle.dev/v1alpha1\nkind: Service\nmetadata: {name: x}\nspec:\n"
            + "\n".join("  " + line for line in lines) + "\n")


def test_an_alias_bomb_is_refused_in_milliseconds() -> None:
    start = time.perf_counter()
    with pytest.raises(YamlLimitError) as refused:
        safeyaml.load_all(billion_laughs())
    took = time.perf_counter() - start
    assert took < 0.1, f"took {took:.3f}s"
    assert "expands to more than 2000000 nodes" in str(refused.value)
    assert refused.value.problem_mark is not None and refused.value.problem_mark.line == 10


def test_the_library_loader_refuses_a_bomb_as_a_document_error() -> None:
    start = time.perf_counter()
    result = load_text(billion_laughs(), "bomb.yaml")
    assert time.perf_counter() - start < 0.5
    assert not result.ok and result.resources == []
    (line,) = result.error_lines()
    assert line.startswith("bomb.yaml, document 0: ") and "invalid YAML: the input expands" in line


def test_aliases_within_the_budget_load() -> None:
    text = "base: &b {app: web, tier: front}\nx: *b\ny: [*b, *b]\n"
    (doc,) = safeyaml.load_all(text)
    assert doc["y"][1] == {"app": "web", "tier": "front"}
    # Expanded: the root map 1, three keys 3, the anchored map 5, *b 5, the list 1 + 5 + 5.
    safeyaml.check(text, YamlLimits(max_nodes=25))
    with pytest.raises(YamlLimitError, match="more than 24 nodes"):
        safeyaml.check(text, YamlLimits(max_nodes=24))


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(YamlLimitError, match=r"recursive alias \*a"):
        safeyaml.load_all("a: &a [1, *a]\n")


def test_depth_documents_and_size_are_bounded() -> None:
    with pytest.raises(YamlLimitError, match="nested deeper than 5"):
        safeyaml.check("[" * 6 + "]" * 6, YamlLimits(max_depth=5))
    with pytest.raises(yaml.YAMLError):  # libyaml's own bound, far below the C stack's
        safeyaml.check("[" * 100_000 + "]" * 100_000)
    with pytest.raises(YamlLimitError, match="more than 3 documents"):
        safeyaml.check("a: 1\n---\nb: 2\n---\nc: 3\n---\nd: 4\n", YamlLimits(max_documents=3))
    with pytest.raises(YamlLimitError, match="larger than 10 bytes"):
        safeyaml.check("a: 12345678901\n", YamlLimits(max_bytes=10))


def test_anchors_are_scoped_to_their_document() -> None:
    text = "a: &x [1, 2]\n---\nb: *x\n"
    with pytest.raises(yaml.YAMLError, match="undefined alias"):
        safeyaml.load_all(text)


# Attack audit of the API (ADR 0102): what the loader builds is what JSON can carry, and a key
# given twice is an error, not "the last one wins".

SERVICE = ("apiVersion: mesh.tulle.dev/v1alpha1\nkind: Service\nmetadata:\n  name: a\n"
           "spec:\n  selector: {app: a}\n  ports: [{port: 80}]\n")


@pytest.mark.parametrize(("text", "where"), [
    (SERVICE + "  ports: [{port: 81}]\n", "spec"),
    (SERVICE.replace("  name: a\n", "  name: a\n  name: b\n"), "metadata"),
    (SERVICE.replace("{app: a}", "{app: a, app: b}"), "selector"),
])
def test_a_key_given_twice_is_refused_with_its_line(text: str, where: str) -> None:
    with pytest.raises(yaml.YAMLError) as refused:
        safeyaml.load_all(text)
    assert "given twice" in str(refused.value), refused.value
    result = load_text(text, "dup.yaml")
    (line,) = result.error_lines()
    assert "invalid YAML" in line and "given twice" in line and "line " in line, line


def test_an_integer_of_thousands_of_digits_is_a_yaml_error_not_a_crash() -> None:
    text = SERVICE.replace("port: 80", "port: " + "9" * 5000)
    with pytest.raises(yaml.YAMLError) as refused:
        safeyaml.load_all(text)
    assert "digits" in str(refused.value)
    (line,) = load_text(text, "big.yaml").error_lines()
    assert "invalid YAML" in line and "line 7" in line, line


def test_what_json_cannot_carry_is_refused_and_a_timestamp_stays_its_text() -> None:
    # As Kubernetes' YAML reader does: an unquoted date is the string written.
    (doc,) = safeyaml.load_all(SERVICE.replace("name: a", "name: 2001-12-14"))
    assert doc["metadata"]["name"] == "2001-12-14"
    for tagged in ("!!binary YWJj", "!!set {a: null}"):
        with pytest.raises(yaml.YAMLError) as refused:
            safeyaml.load_all(SERVICE.replace("{app: a}", tagged))
        assert "JSON" in str(refused.value), refused.value
    with pytest.raises(yaml.YAMLError):
        safeyaml.load_all(SERVICE.replace("name: a", "name: !!python/object:os.system [ls]"))


def test_a_key_that_overrides_a_merged_one_is_yamls_rule_not_a_duplicate() -> None:
    (doc,) = safeyaml.load_all("b: &b {x: 1, y: 2}\nc: {<<: *b, x: 3}\n")
    assert doc["c"] == {"x": 3, "y": 2}
