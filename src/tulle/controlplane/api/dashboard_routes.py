"""The dashboard: its static files under `/dashboard/`, and the two reads it needs beyond the
API's others (ADR 0056).

    GET /dashboard/                         the page (static; `tulle dashboard` opens it)
    GET /dashboard/{asset}                  its script, style and vendored libraries
    GET /api/v1/topology?window=&namespace= the service graph with golden signals
    GET /api/v1/services/{ns}/{name}/attached   the routes and policies attached to a Service

The static files are a fixed list (`tulle.dashboard.ASSETS`), served without a token: they
hold no mesh data, and a browser cannot put a bearer token on a navigation.  Everything the
page shows comes from API calls that carry the token (`auth.py`), which the page takes from
the URL fragment `tulle dashboard` opens (a fragment never reaches a server or a log) and
keeps in the tab's session storage.  Each file goes out with a strict Content-Security-Policy
(scripts and connections to this origin only, no inline script), `nosniff`, no framing and no
referrer.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import RedirectResponse, Response

from tulle.controlplane.api.apply import error as _error
from tulle.controlplane.compiler.durations import to_ms
from tulle.controlplane.push.cache import SnapshotCache
from tulle.controlplane.store.protocol import ResourceStore
from tulle.controlplane.telemetry.topology import topology_document
from tulle.controlplane.telemetry.window import StatsWindow
from tulle.dashboard import ASSETS, asset

SECURITY_HEADERS = {
    "content-security-policy": ("default-src 'none'; script-src 'self'; "
                                "style-src 'self' 'unsafe-inline'; "
                                "img-src 'self' data:; connect-src 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}
INTERNAL_API = "internal.tulle.dev/v1"


def _targets(obj: dict[str, Any], namespace: str, name: str) -> bool:
    """Whether `obj` (a route or a policy) attaches to Service `namespace/name`."""
    md = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    if not isinstance(spec, dict):
        return False
    own_ns = md.get("namespace") or "default"
    refs = list(spec.get("parentRefs") or [])
    target = spec.get("targetRef")
    if isinstance(target, dict):
        refs.append(target)
    for ref in refs:
        if (isinstance(ref, dict) and ref.get("kind") == "Service" and ref.get("name") == name
                and (ref.get("namespace") or own_ns) == namespace):
            return True
    return False


def add_dashboard_routes(app: FastAPI, store: ResourceStore, cache: SnapshotCache,
                         stats: StatsWindow | None) -> None:
    @app.get("/dashboard", include_in_schema=False)
    async def dashboard_root() -> Response:
        return RedirectResponse("/dashboard/", status_code=307)

    @app.get("/dashboard/", include_in_schema=False)
    async def dashboard_index() -> Response:
        return _asset("index.html")

    @app.get("/dashboard/{name:path}", include_in_schema=False)
    async def dashboard_asset(name: str) -> Response:
        if name not in ASSETS:
            return _error(404, "no such dashboard file")
        return _asset(name)

    @app.get("/api/v1/topology", response_model=None)
    async def topology(window: str = "30s", namespace: str | None = None) -> Any:
        if stats is None:
            return _error(404, "this control plane takes no traffic reports (--stats-interval 0)")
        try:
            ms = to_ms(window)
        except ValueError as exc:
            return _error(400, f"window: {exc}")
        if not 0 < ms <= stats.retention * 1000:
            return _error(400, f"window: must be more than 0 and at most "
                               f"{stats.retention:g}s, got {window}")
        return topology_document(stats, ms / 1000, cache.get, namespace=namespace or None,
                                 window_text=window)

    @app.get("/api/v1/services/{namespace}/{name}/attached", response_model=None)
    async def attached(namespace: str, name: str) -> Any:
        items, _ = await store.list()
        routes: list[dict[str, Any]] = []
        policies: list[dict[str, Any]] = []
        for obj in items:
            if obj.get("apiVersion") == INTERNAL_API or not _targets(obj, namespace, name):
                continue
            spec = obj.get("spec") or {}
            entry = {"kind": obj.get("kind"), "apiVersion": obj.get("apiVersion"),
                     "metadata": {k: (obj.get("metadata") or {}).get(k)
                                  for k in ("name", "namespace")},
                     "spec": spec, "status": obj.get("status")}
            (routes if "parentRefs" in spec else policies).append(entry)
        return {"service": {"namespace": namespace, "name": name},
                "routes": routes, "policies": policies}


def _asset(name: str) -> Response:
    body, content_type = asset(name)
    return Response(body, media_type=content_type, headers=SECURITY_HEADERS)


__all__ = ["SECURITY_HEADERS", "add_dashboard_routes"]
