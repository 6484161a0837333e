"""What a compiler plugin is: one policy kind's edit of the model, and helpers to write one.

A plugin has one job: it reads the model (and the settings the user wrote, which the model
carries) and returns the model with its policy applied — rules configured, rules left out with
the reason, conditions written.  It never renders proxy config and never reads the store; the
order plugins run in is declared once, in `plugins/__init__.py`.  `affects` names the model
fields the plugin edits: its golden files show those fields after it ran.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from msgspec.structs import replace

from tulle.controlplane.compiler.ir import MeshModel, Route


@dataclass(frozen=True, slots=True)
class Plugin:
    name: str
    apply: Callable[[MeshModel], MeshModel]
    affects: tuple[str, ...]
    """Fields of `MeshModel` this plugin edits."""


def map_routes(mesh: MeshModel, edit: Callable[[Route], Route]) -> MeshModel:
    """`mesh` with `edit` applied to every route; the same object when no route changed, so a
    plugin with nothing to do costs one pass and no allocation."""
    routes = tuple(edit(r) for r in mesh.routes)
    if all(a is b for a, b in zip(routes, mesh.routes, strict=True)):
        return mesh
    return replace(mesh, routes=routes)


__all__ = ["Plugin", "map_routes"]
