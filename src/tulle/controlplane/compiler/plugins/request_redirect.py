"""Gateway API `RequestRedirect` -> the rule's redirect filter (`proxyconfig/filters/redirect.py`).

The proxy answers such a rule's requests itself (`Location` built from the request and these
settings), so the rule's backends never see them; a redirect rule without `backendRefs` is
rendered with the invalid backend as every backend-less rule is, and the redirect answers
before it matters.  Conversion and checks: `url_filters.py`.
"""

from __future__ import annotations

from tulle.controlplane.compiler.ir import MeshModel
from tulle.controlplane.compiler.plugins.base import Plugin, map_routes
from tulle.controlplane.compiler.url_filters import configure

NAME = "request_redirect"

_route = configure(NAME, "RequestRedirect", "requestRedirect",
                   {"scheme": "scheme", "hostname": "hostname", "port": "port",
                    "statusCode": "status_code"})


def apply(mesh: MeshModel) -> MeshModel:
    return map_routes(mesh, _route)


PLUGIN = Plugin(NAME, apply, affects=("routes",))
