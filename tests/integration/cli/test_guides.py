"""The guides' examples are runnable: every YAML block of each guide under docs/guide/ is
applied, in order, with `tulle apply --strict` (refused if anything would be stored but not
enforced) against a real control plane, and described back without a problem condition."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from tests.support.cli import tulle
from tests.support.controlplane import running_control_plane

GUIDES = Path(__file__).resolve().parents[3] / "docs" / "guide"
WITH_EXAMPLES = ("routing.md", "resilience.md", "security.md", "observability.md")


def blocks(guide: str) -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```$", (GUIDES / guide).read_text(), re.M | re.S)


@pytest.mark.parametrize("guide", WITH_EXAMPLES)
async def test_every_example_applies_strictly(guide: str) -> None:
    found = blocks(guide)
    assert found, f"{guide} has no YAML examples"
    async with running_control_plane() as cp:
        for i, block in enumerate(found):
            code, out, err = await tulle(cp.api_url, "apply", "--strict", "-f", "-", stdin=block)
            assert code == 0, f"{guide} block {i}:\n{block}\n{out}{err}"
            assert "Warning:" not in err, f"{guide} block {i}: {err}"
        for block in found:
            for doc in yaml.safe_load_all(block):
                md = doc["metadata"]
                ns = ["-n", md["namespace"]] if md.get("namespace") else []
                code, out, _ = await tulle(cp.api_url, "describe", doc["kind"], md["name"], *ns)
                assert code == 0 and "=False" not in out.split("Conditions:")[1], out
