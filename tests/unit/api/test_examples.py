"""Every example under examples/resources/ validates, and covers every kind."""

from __future__ import annotations

from pathlib import Path

from tulle.api import kinds, load_path

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "resources"


def test_examples_validate() -> None:
    result = load_path(EXAMPLES)
    assert result.ok, "\n".join(result.error_lines())
    assert {r.kind_name for r in result.resources} == {k.kind for k in kinds()}
    assert len([r for r in result.resources if r.kind_name == "Workload"]) == 2


def test_quickstart_examples_validate() -> None:
    result = load_path(EXAMPLES.parent / "quickstart")
    assert result.ok, "\n".join(result.error_lines())
    assert len(result.resources) == 6
