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
from typing import Any

import msgspec
from msgspec.structs import replace

from tulle.controlplane.compiler.ir import MeshModel, Route, RuleFilter
from tulle.proxyconfig import filters as proxy_filters
from tulle.proxyconfig.filters import HTTPFilter
from tulle.proxyconfig.validate import convert_error


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


def claim_filter(f: RuleFilter, plugin: str, entry: dict[str, Any], path: str,
                 invalid: list[str]) -> RuleFilter:
    """`f` claimed by `plugin` and configured with `entry` as the proxy's filter config, checked
    as the proxy will check it; on any problem (appended to `invalid` with `path`) claimed but
    left without a config, so its rule is left out."""
    try:
        cfg = msgspec.convert(entry, HTTPFilter)
    except msgspec.ValidationError as exc:
        invalid.append(str(convert_error(exc, path)))
        return replace(f, claimed_by=plugin)
    errs = proxy_filters.errors(cfg, path)
    if errs:
        invalid.extend(str(e) for e in errs)
        return replace(f, claimed_by=plugin)
    return replace(f, claimed_by=plugin, config=cfg)


__all__ = ["Plugin", "claim_filter", "map_routes"]
