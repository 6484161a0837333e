"""Compiler golden files: each testdata/*.yaml mesh compiles to golden/*.json, byte for byte.

Refresh after an intended change with `TULLE_UPDATE_GOLDEN=1 pytest tests/unit/controlplane/compiler`
and review the diff like code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from tulle.controlplane.compiler import MeshInputs, compile_mesh

HERE = Path(__file__).parent
CASES = sorted((HERE / "testdata").glob("*.yaml"))


def render(resources: list[dict[str, Any]]) -> bytes:
    result = compile_mesh(MeshInputs.from_resources(resources))
    out = {
        "snapshots": {f"{ns}/{name}": msgspec.to_builtins(cfg)
                      for (ns, name), cfg in result.snapshots.items()},
        "conditions": {f"{k}/{ns}/{name}": conds
                       for (k, ns, name), conds in sorted(result.conditions.items())},
        "errors": {f"{ns}/{name}": e for (ns, name), e in sorted(result.errors.items())},
    }
    return msgspec.json.format(msgspec.json.encode(out, order="sorted"), indent=2) + b"\n"


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_compiles_to_golden(case: Path) -> None:
    resources = [d for d in yaml.safe_load_all(case.read_text()) if d]
    got = render(resources)
    golden = HERE / "golden" / f"{case.stem}.json"
    if os.environ.get("TULLE_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_bytes(got)
    assert golden.exists(), f"no golden file; run with TULLE_UPDATE_GOLDEN=1 to create {golden}"
    assert got == golden.read_bytes(), f"{case.name} no longer compiles to {golden.name}"


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_compilation_is_deterministic_under_input_order(case: Path) -> None:
    resources = [d for d in yaml.safe_load_all(case.read_text()) if d]
    assert render(resources) == render(list(reversed(resources)))
