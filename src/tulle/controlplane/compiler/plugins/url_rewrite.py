"""Gateway API `URLRewrite` -> the rule's rewrite filter (`proxyconfig/filters/rewrite.py`).

The upstream sees the rewritten authority and path; routing already happened (a rewrite never
moves a request to another rule).  Conversion and checks: `url_filters.py`.
"""

from __future__ import annotations

from tulle.controlplane.compiler.ir import MeshModel
from tulle.controlplane.compiler.plugins.base import Plugin, map_routes
from tulle.controlplane.compiler.url_filters import configure

NAME = "url_rewrite"

_route = configure(NAME, "URLRewrite", "urlRewrite", {"hostname": "hostname"})


def apply(mesh: MeshModel) -> MeshModel:
    return map_routes(mesh, _route)


PLUGIN = Plugin(NAME, apply, affects=("routes",))
