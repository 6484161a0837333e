"""A resource type named in an API path, as the resource endpoints read it: its kind, or a 404
naming the type; and the namespace a namespaced kind is read in (`default` when none is
given).  One place for every route module that takes `{type}` and `namespace`."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from tulle.api.registry import KindInfo, resolve
from tulle.controlplane.api.apply import error


def kind_info(type_: str) -> KindInfo | JSONResponse:
    """The kind `type_` names (plural, singular or short name), else a 404 saying so."""
    try:
        return resolve(type_)
    except KeyError as exc:
        return error(404, str(exc.args[0]))


def stored_namespace(info: KindInfo, namespace: str | None) -> str | None:
    """The namespace an object of `info` is stored under: None for a cluster-wide kind."""
    return (namespace or "default") if info.namespaced else None


__all__ = ["kind_info", "stored_namespace"]
