"""How the CLI prints: aligned tables, and YAML / JSON for `-o yaml|json`."""

from __future__ import annotations

import json
from typing import Any

import click


def table(rows: list[list[str]]) -> None:
    """Columns padded to their widest cell, three spaces apart, like kubectl."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def emit(data: Any, output: str) -> bool:
    """Print `data` as JSON or YAML when `output` asks for it; False for a table format."""
    if output == "json":
        click.echo(json.dumps(data, indent=2, sort_keys=False))
        return True
    if output == "yaml":
        import yaml  # (only here: PyYAML costs ~10 ms of start-up)

        click.echo(yaml.safe_dump(data, sort_keys=False).rstrip())
        return True
    return False


__all__ = ["emit", "table"]
