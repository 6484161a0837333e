"""`GET /api/v1/version` and `GET /api/v1/api-resources`: what this control plane is and
which kinds it serves, for `tulle version` and `tulle api-resources` (as kubectl asks the
API server rather than knowing kinds itself, so an older CLI lists a newer server's kinds).
"""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI

from tulle.api.registry import kinds


def package_version() -> str:
    try:
        return version("tulle")
    except PackageNotFoundError:
        return "unknown"


def add_discovery_routes(app: FastAPI, store_backend: str) -> None:
    @app.get("/api/v1/version")
    async def server_version() -> dict[str, Any]:
        return {"version": package_version(), "python": platform.python_version(),
                "store": store_backend}

    @app.get("/api/v1/api-resources")
    async def api_resources() -> dict[str, Any]:
        return {"resources": [
            {"name": k.plural, "shortNames": list(k.short_names), "apiVersion": k.api_version,
             "alsoServed": list(k.also_served), "namespaced": k.namespaced, "kind": k.kind,
             "policy": k.is_policy} for k in kinds()]}


__all__ = ["add_discovery_routes", "package_version"]
