"""The mesh as the reconciler saw it at one moment, for compilations that run off the event loop.

Why: apply compiles the documents it is given over the whole mesh before it writes them, for
its warnings (ADR 0024) and, while an older proxy is connected, renders some proxies'
snapshots too (ADR 0125).  At thousands of Services that is seconds of CPU, and on the event
loop those seconds held up every proxy's stream, every push and every API call (ADR 0128).  So
apply runs them on a worker thread (`api/apply_checks.py`), and a thread must not read the
reconciler's dict while the loop changes it (a change in the middle of an iteration raises, or
a compilation sees half of a watch page).

`MeshView` is the copy a worker reads: taken on the loop (`Reconciler.view`), a new dict of the
same objects.  The copy is shallow, and that suffices because nobody changes a resource object
in place: the reconciler replaces an entry for every change (the store hands out a fresh copy
of each object it returns), and the compiler only reads its inputs.  So the view stays what it
was while the loop goes on, for as long as a worker needs it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from tulle.controlplane.compiler import MeshInputs, MeshModel, derive, plugins, render_proxies
from tulle.controlplane.compiler.status import conditions as model_conditions
from tulle.controlplane.store.protocol import Obj
from tulle.proxyconfig.model import ProxyConfig

ResourceKey = tuple[str, str, str]
"""(kind, namespace or "", name)."""


def resource_key(obj: Obj) -> ResourceKey:
    md = obj.get("metadata") or {}
    return (str(obj.get("kind")), md.get("namespace") or "", str(md.get("name")))


@dataclass(frozen=True, slots=True)
class MeshView:
    """The reconciler's resources at one moment (never changed after it is made)."""

    resources: Mapping[ResourceKey, Obj]

    def conditions(self, objs: list[Obj]) -> dict[ResourceKey, list[dict[str, Any]]]:
        """The conditions `objs` would have once applied over this state: a dry compilation
        (model and plugins; nothing rendered, nothing written, no cache touched).  An object
        keeps the status it has (a Service its virtual IP)."""
        return model_conditions(self.model(objs))

    def snapshots(self, objs: list[Obj],
                  keys: Collection[tuple[str, str]]) -> dict[tuple[str, str], ProxyConfig]:
        """The snapshots the proxies `keys` would be sent once `objs` are applied over this
        state (`objs` empty: this state alone), rendered as a compilation renders them but for
        those proxies only (ADR 0125)."""
        return render_proxies(self.model(objs), keys)

    def without(self, key: ResourceKey) -> MeshView:
        """This state with the resource `key` deleted (what `describe` weighs an object's
        part in older proxies' snapshots against, ADR 0131)."""
        return MeshView({k: v for k, v in self.resources.items() if k != key})

    def model(self, objs: list[Obj]) -> MeshModel:
        resources = dict(self.resources)
        for obj in objs:
            key = resource_key(obj)
            current = resources.get(key)
            keep = {"status": current["status"]} if current and "status" in current else {}
            resources[key] = {**obj, **keep}
        return plugins.run(derive(MeshInputs.from_resources(resources.values())))


__all__ = ["MeshView", "ResourceKey", "resource_key"]
