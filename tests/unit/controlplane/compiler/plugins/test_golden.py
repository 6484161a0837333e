"""Each compiler plugin's own golden files: input resources -> the model fields it edits.

For every plugin in `plugins.ORDER` and every `testdata/<plugin>/*.yaml`, the mesh is derived
and the plugins run up to and including that one; the fields the plugin `affects` are written
as JSON and compared with `golden/<plugin>/<case>.json`, byte for byte.  Each case must show
the plugin doing something: the same fields before it ran must differ.

Refresh after an intended change with
`TULLE_UPDATE_GOLDEN=1 pytest tests/unit/controlplane/compiler/plugins` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from tulle.controlplane.compiler import MeshInputs, derive, plugins
from tulle.controlplane.compiler.ir import MeshModel
from tulle.controlplane.compiler.plugins.base import Plugin

HERE = Path(__file__).parent
NAMES = [p.name for p, _ in plugins.ORDER]
CASES = [(name, case) for name in NAMES
         for case in sorted((HERE / "testdata" / name).glob("*.yaml"))]


def _plain(value: Any) -> Any:
    """The model as JSON-able values, without the user's own `spec` (the inputs, not output)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "spec"}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def dump(mesh: MeshModel, plugin: Plugin) -> bytes:
    out: dict[str, Any] = {}
    for name in plugin.affects:
        value = getattr(mesh, name)
        if name == "conditions":
            value = {"/".join(ref): conds for ref, conds in value.items()}
        out[name] = _plain(msgspec.to_builtins(value))
    return msgspec.json.format(msgspec.json.encode(out, order="sorted"), indent=2) + b"\n"


def _load(case: Path) -> MeshModel:
    return derive(MeshInputs.from_resources(d for d in yaml.safe_load_all(case.read_text()) if d))


def _before(mesh: MeshModel, name: str) -> MeshModel:
    i = NAMES.index(name)
    return plugins.run(mesh, NAMES[i - 1]) if i else mesh


@pytest.mark.parametrize(("name", "case"), CASES, ids=lambda c: c if isinstance(c, str) else c.stem)
def test_plugin_golden(name: str, case: Path) -> None:
    plugin = plugins.ORDER[NAMES.index(name)][0]
    got = dump(plugins.run(_load(case), name), plugin)
    golden = HERE / "golden" / name / f"{case.stem}.json"
    if os.environ.get("TULLE_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(got)
    assert golden.exists(), f"no golden file; run with TULLE_UPDATE_GOLDEN=1 to create {golden}"
    assert got == golden.read_bytes(), f"{name}: {case.name} no longer gives {golden.name}"


@pytest.mark.parametrize(("name", "case"), CASES, ids=lambda c: c if isinstance(c, str) else c.stem)
def test_each_case_shows_its_plugin_at_work(name: str, case: Path) -> None:
    plugin = plugins.ORDER[NAMES.index(name)][0]
    mesh = _load(case)
    assert dump(_before(mesh, name), plugin) != dump(plugins.run(mesh, name), plugin)


@pytest.mark.parametrize("name", NAMES)
def test_every_plugin_has_golden_cases(name: str) -> None:
    assert list((HERE / "testdata" / name).glob("*.yaml")), f"plugin {name} has no testdata"
