"""`GET /api/v1/check`: every finding `tulle check` prints, from one call.

Read-only.  The store is asked first (a list that fails or hangs is the `StoreUnhealthy`
error and the rest is skipped: nothing else would be true), then the resources' status
conditions, the proxies against their desired snapshots, workloads whose proxy has gone, and,
when the control plane runs a CA, certificate expiry and a rotation half done (ADR 0035).
Query: `rootWarnDays` (default 30).  Answer: `{"findings": [...], "checked": [...]}`, the
second naming what was looked at, so "no findings" is never "nothing checked".
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Query

from tulle.api.registry import kinds
from tulle.controlplane.ca.expiry import (
    DEFAULT_ROOT_WARN,
    ProxyCert,
    ca_findings,
    rotation_findings,
)
from tulle.controlplane.ca.expiry import proxy_findings as cert_findings
from tulle.controlplane.ca.keeper import CAKeeper
from tulle.controlplane.check.finding import Finding, order
from tulle.controlplane.check.mesh import proxy_findings, resource_findings, workload_findings
from tulle.controlplane.push.server import PushServer
from tulle.controlplane.store.protocol import ResourceStore

STORE_TIMEOUT = 5.0
"""Seconds the store has to list everything before it is reported unhealthy."""


async def _everything(store: ResourceStore) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for info in kinds():
        items, _rev = await store.list(info.kind, None, None)
        out += items
    return out


def add_check_routes(app: FastAPI, store: ResourceStore, push: PushServer,
                     proxy_rows: Callable[[], list[dict[str, Any]]],
                     keeper: CAKeeper | None) -> None:
    @app.get("/api/v1/check")
    async def check(root_warn_days: float = Query(DEFAULT_ROOT_WARN.days,
                                                  alias="rootWarnDays", ge=0)) -> Any:
        checked = ["store"]
        try:
            objects = await asyncio.wait_for(_everything(store), STORE_TIMEOUT)
        except Exception as exc:  # any failure of the store is the finding
            why = "timed out" if isinstance(exc, TimeoutError) else f"{type(exc).__name__}: {exc}"
            f = Finding("error", "StoreUnhealthy", "control-plane store",
                        f"listing resources failed: {why}",
                        "check the store (its file, disk, or the PostgreSQL server) and the "
                        "control plane's log")
            return {"findings": [f.to_dict()], "checked": checked}
        found: list[Finding] = resource_findings(objects)
        rows = proxy_rows()
        found += proxy_findings(rows)
        found += workload_findings(o for o in objects if o.get("kind") == "Workload")
        checked += ["resources", "proxies", "workloads"]
        if keeper is not None and keeper.state is not None:
            now = dt.datetime.now(dt.UTC)
            state = keeper.state
            found += ca_findings(state, now, dt.timedelta(days=root_warn_days),
                                 from_files=keeper.from_files)
            found += cert_findings((ProxyCert(f"{st.namespace}/{st.name}", st.cert_not_before,
                                              st.cert_not_after, st.connected)
                                    for st in push.statuses()), now)
            found += rotation_findings(state, keeper.progress(await keeper.views()), now)
            checked += ["certificates", "ca-rotation"]
        return {"findings": [f.to_dict() for f in order(found)], "checked": checked,
                "counts": {"resources": len(objects), "proxies": len(rows),
                           "connected": sum(1 for r in rows if r.get("connected"))}}


__all__ = ["add_check_routes"]
