"""The plugin order is declared once, complete, and every position says why."""

from __future__ import annotations

import pkgutil

from tulle.controlplane.compiler import plugins
from tulle.controlplane.compiler.ir import MeshModel


def test_every_plugin_module_has_a_declared_position() -> None:
    modules = {m.name for m in pkgutil.iter_modules(plugins.__path__)} - {"base"}
    assert {p.name for p, _ in plugins.ORDER} == modules
    assert len({p.name for p, _ in plugins.ORDER}) == len(plugins.ORDER)


def test_every_position_gives_its_reason_and_names_real_model_fields() -> None:
    fields = set(MeshModel.__struct_fields__)
    for plugin, reason in plugins.ORDER:
        assert len(reason) > 20, plugin.name
        assert plugin.affects and set(plugin.affects) <= fields, plugin.name


def test_unclaimed_filters_runs_after_every_plugin_that_claims_filters() -> None:
    names = [p.name for p, _ in plugins.ORDER]
    assert names.index("header_modifiers") < names.index("unclaimed_filters")
    assert names[-1] == "unenforced_policies"


def test_run_until_stops_after_the_named_plugin() -> None:
    mesh = MeshModel(services=(), routes=(), policies=(), proxies=())
    assert plugins.run(mesh, "header_modifiers") is mesh  # nothing to do: the same object
