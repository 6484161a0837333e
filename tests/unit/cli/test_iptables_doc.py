"""docs/reference/iptables.md documents every `tulle iptables apply|clean` option with its real
default."""

from __future__ import annotations

import re
from pathlib import Path

import click

from tulle.cli.iptables import apply_cmd, clean_cmd

DOC = Path(__file__).resolve().parents[3] / "docs" / "reference" / "iptables.md"


def _rows() -> dict[str, str]:
    rows: dict[str, str] = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\|\s*(`--[^|]+)\|([^|]*)\|", line)
        if m:
            for name in re.findall(r"(--[\w-]+)", m.group(1)):
                rows[name] = m.group(2).strip()
    return rows


def test_every_option_is_documented_with_its_default() -> None:
    rows = _rows()
    for cmd in (apply_cmd, clean_cmd):
        for p in cmd.params:
            if not isinstance(p, click.Option):
                continue
            for flag in (*p.opts, *p.secondary_opts):
                assert flag in rows, f"{flag} is not documented in {DOC.name}"
            default = rows[p.opts[0]]
            value = p.default if isinstance(p.default, (bool, int, str)) else None  # not UNSET
            if p.is_flag:
                assert ("on" if value else "off") in default, f"{p.opts[0]}: {default!r}"
            elif value not in (None, "") and not p.multiple:
                assert str(value) in default, f"{p.opts[0]}: doc {default!r}, code {value!r}"
            else:
                assert default == "none", f"{p.opts[0]}: doc {default!r}, code has no default"
