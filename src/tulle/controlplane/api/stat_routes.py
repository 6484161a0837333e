"""`GET /api/v1/stat`: traffic per Service, workload and edge, for `tulle stat` (ADR 0046).

Read-only (a read-only API token may call it, auth.py).  Query: `kind` (Service, Workload, or
any name kubectl would accept for them: `svc`, `services`, `workload`, `wl`), `name`
(optional), `namespace` (optional: every namespace without it), `window` (a Gateway API
duration, default `30s`, at most the control plane's retention).  The document is described in
docs/reference/stat.md.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Query

from tulle.controlplane.api.apply import error as _error
from tulle.controlplane.compiler.durations import to_ms
from tulle.controlplane.telemetry.stat import Kind, Snapshots, members_from, stat_document
from tulle.controlplane.telemetry.window import StatsWindow

KINDS: dict[str, Kind] = {
    "service": "Service", "services": "Service", "svc": "Service",
    "workload": "Workload", "workloads": "Workload", "wl": "Workload",
}
DEFAULT_WINDOW = "30s"


def add_stat_routes(app: FastAPI, window: StatsWindow, snapshots: Snapshots | None = None) -> None:
    """`snapshots`: the compiled snapshot per workload, to tell who is behind each Service
    (its MESHED column); without it, only the workloads whose sidecar names it."""
    members = members_from(snapshots) if snapshots is not None else None

    @app.get("/api/v1/stat", response_model=None)
    async def stat(kind: str = "Service", name: str | None = None,
                   namespace: str | None = None,
                   window_: str = Query(DEFAULT_WINDOW, alias="window")) -> Any:
        k = KINDS.get(kind.lower())
        if k is None:
            return _error(400, f"kind: {kind!r} is not one of Service, Workload")
        try:
            ms = to_ms(window_)
        except ValueError as exc:
            return _error(400, f"window: {exc}")
        if not 0 < ms <= window.retention * 1000:
            return _error(400, f"window: must be more than 0 and at most "
                               f"{window.retention:g}s, got {window_}")
        return stat_document(window, ms / 1000, k, name=name or None,
                             namespace=namespace or None, window_text=window_, members=members)


__all__ = ["DEFAULT_WINDOW", "KINDS", "add_stat_routes"]
