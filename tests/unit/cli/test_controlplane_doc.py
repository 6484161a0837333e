"""docs/reference/controlplane.md documents every `tulle control-plane run` option with its
default and environment variable."""

from __future__ import annotations

import re
from pathlib import Path

import click

from tulle.cli.controlplane import run_cmd

DOC = Path(__file__).resolve().parents[3] / "docs" / "reference" / "controlplane.md"


def _rows() -> dict[str, tuple[str, str]]:
    rows: dict[str, tuple[str, str]] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\|\s*(`--[^|]+)\|([^|]*)\|([^|]*)\|", line)
        if m:
            names = re.findall(r"`(--[\w-]+)`", m.group(1))
            defaults = re.findall(r"`([^`]*)`", m.group(2))
            for i, n in enumerate(names):
                rows[n] = (defaults[i] if i < len(defaults) else "", m.group(3).strip())
    return rows


def test_every_option_is_documented_with_its_default_and_env() -> None:
    rows = _rows()
    for p in run_cmd.params:
        if not isinstance(p, click.Option) or p.name == "log_level":
            continue
        flag = max(p.opts, key=len)
        assert flag in rows, f"{flag} is not documented in {DOC.name}"
        default, env = rows[flag]
        # A repeatable option (`multiple`) has no scalar default: its doc column stays empty.
        want = p.default if p.default not in (None, "") and not p.multiple else ""
        if want != "" and default != "<host>-<pid>":
            assert default == str(want), f"{flag}: doc says {default!r}, code {want!r}"
        assert (p.envvar or "") == env.strip("`"), f"{flag}: env {p.envvar!r} vs doc {env!r}"
