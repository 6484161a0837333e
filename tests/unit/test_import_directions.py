"""The layers import one way (DESIGN.md section 2): the contract depends on nothing, the proxy
on the contract only, the user API on neither plane.  Checked on the source with `ast`, so an
import inside a function or under TYPE_CHECKING counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "tulle"

FORBIDDEN: dict[str, frozenset[str]] = {
    # The proxy knows the contract, never the control plane or the user's language.
    "dataplane": frozenset({"controlplane", "api", "cli"}),
    # The contract is shared by both planes: it imports neither, nor the user API.
    "proxyconfig": frozenset({"dataplane", "controlplane", "api", "cli"}),
    # The user's language is what the control plane reads; it knows neither plane.
    "api": frozenset({"dataplane", "controlplane", "cli"}),
    # The control plane compiles for proxies, it does not run one.
    "controlplane": frozenset({"dataplane", "cli"}),
}
"""Top-level packages of `tulle` each layer must not import.  `cli` may import anything."""


def _module(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """Every `tulle.*` module a source imports, with its line; relative imports resolved."""
    out: list[tuple[int, str]] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((node.lineno, target))
            if target == "tulle":  # `from tulle import dataplane`
                out += [(node.lineno, f"tulle.{a.name}") for a in node.names]
    return [(line, name) for line, name in out if name == "tulle" or name.startswith("tulle.")]


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    layer = module.split(".")[1] if module.count(".") else ""
    banned = FORBIDDEN.get(layer, frozenset())
    found = []
    for line, name in imported(source, module, is_package):
        parts = name.split(".")
        if len(parts) > 1 and parts[1] in banned:
            found.append(f"{module}:{line} imports {name}")
    return found


def test_the_layers_import_in_the_allowed_directions_only() -> None:
    found: list[str] = []
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 50  # the walk really saw the tree
    for path in files:
        found += violations(path.read_text(encoding="utf-8"), _module(path),
                            path.name == "__init__.py")
    assert found == []


@pytest.mark.parametrize(("module", "source"), [
    ("tulle.dataplane.agent", "from tulle.controlplane.push.wire import WireCache"),
    ("tulle.dataplane.agent", "import tulle.api.registry"),
    ("tulle.dataplane.agent", "def f():\n    from tulle import controlplane\n"),
    ("tulle.dataplane.listeners.http1", "from ...controlplane import server"),
    ("tulle.proxyconfig.stream", "from tulle.dataplane.server import ProxyServer"),
    ("tulle.proxyconfig.model", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                "    from tulle.controlplane.compiler import MeshInputs\n"),
    ("tulle.api.registry", "from tulle.controlplane.store import memory"),
    ("tulle.controlplane.push.server", "from tulle.dataplane import agent"),
])
def test_a_forbidden_import_is_caught(module: str, source: str) -> None:
    assert violations(source, module) != []


@pytest.mark.parametrize(("module", "source"), [
    ("tulle.dataplane.agent", "from tulle.proxyconfig.stream import Hello"),
    ("tulle.dataplane.agent", "from .server import ProxyServer"),
    ("tulle.controlplane.push.server", "from tulle.proxyconfig import stream"),
    ("tulle.cli.main", "from tulle.dataplane import runner\nfrom tulle.controlplane import app"),
])
def test_an_allowed_import_passes(module: str, source: str) -> None:
    assert violations(source, module) == []
