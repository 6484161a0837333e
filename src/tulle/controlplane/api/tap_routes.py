"""`GET /api/v1/tap`: live request records as JSON lines, for `tulle tap`, `tulle top` and the
dashboard (ADR 0056).

Query: `kind` (Workload — also `deploy`, `deployment`, `workload`, `wl` — or Service — `svc`,
`service`), `name`, `namespace` (default `default`), `path` (prefix), `method`, `status` (`503`,
`5xx`, or `500-599`), `authority`, `direction` (`inbound` / `outbound`), `rate` (records per
second per proxy, default 10, at most 100), `headers` (true: records carry request headers),
`duration` (seconds, default and at most one hour).

The answer is `application/x-ndjson`, one object per line: `{"type": "started", "proxies":
[...]}` first, then `request` records (docs/reference/tap.md), `dropped` counts, `ended` /
`proxy-gone` notices, a `heartbeat` every few seconds (so a watcher that went away is noticed
and its tap stopped at the proxies), and `{"type": "end"}` when `duration` is over.

The Mesh may forbid taps or header values, and caps the rate
(`Mesh.spec.observability.tap`, read at every start and renewal).

Who may tap: any API token, read-only included (it is a GET, like `stat`): records carry what
the mesh's metrics already show per request.  Header values are more (a path or a header may
carry a secret the operator's app put there): `headers=true` needs an admin token, and the
values of credential headers (`Authorization`, `Cookie`, ...) are never sent by a proxy at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from tulle.api.observability_tap import TapSettings
from tulle.controlplane.api.api_tokens import Principal, Role, TokenStore
from tulle.controlplane.api.apply import error as _error
from tulle.controlplane.store.protocol import ResourceStore
from tulle.controlplane.telemetry.tap import (
    EXPIRES_MS,
    MAX_DURATION,
    Kind,
    TapBroker,
    TapError,
    TapTarget,
)

KINDS: dict[str, Kind] = {
    "workload": "Workload", "workloads": "Workload", "wl": "Workload", "deploy": "Workload",
    "deployment": "Workload", "deployments": "Workload",
    "service": "Service", "services": "Service", "svc": "Service",
}
MAX_PARAM = 1024


def parse_status(text: str) -> tuple[int, int]:
    """`503` -> (503, 503); `5xx` -> (500, 599); `400-499` -> (400, 499).  ValueError else."""
    t = text.strip().lower()
    if len(t) == 3 and t[0] in "12345" and t[1:] == "xx":
        base = int(t[0]) * 100
        return base, base + 99
    lo, sep, hi = t.partition("-")
    a = int(lo)
    b = int(hi) if sep else a
    if not (100 <= a <= b <= 599):
        raise ValueError("a status from 100 to 599, a class like 5xx, or a range like 500-504")
    return a, b


async def mesh_tap_settings(store: ResourceStore) -> TapSettings:
    """`Mesh.spec.observability.tap` of the mesh (its defaults without a Mesh)."""
    items, _ = await store.list("Mesh")
    for obj in sorted(items, key=lambda o: (o.get("metadata") or {}).get("name") != "default"):
        raw = ((obj.get("spec") or {}).get("observability") or {}).get("tap")
        if isinstance(raw, dict):
            with contextlib.suppress(ValueError):  # (the store holds validated documents)
                return TapSettings.model_validate(raw)
        break
    return TapSettings()


def _reader(principal: object) -> str:
    """The subject a read-only caller's taps are counted under (ADR 0060); "" for admins."""
    if isinstance(principal, Principal) and principal.role is not Role.ADMIN:
        return principal.subject
    return ""


def _line(item: dict[str, Any]) -> bytes:
    return json.dumps(item, separators=(",", ":")).encode() + b"\n"


def add_tap_routes(app: FastAPI, broker: TapBroker, store: ResourceStore,
                   heartbeat: float = EXPIRES_MS / 3000,
                   tokens: TokenStore | None = None) -> None:
    """`tokens`: asked at every heartbeat whether the watcher's token still exists; a revoked
    one ends the watch (default: the tokens kept in `store`)."""
    tokens = tokens if tokens is not None else TokenStore(store)

    @app.get("/api/v1/tap", response_model=None)
    async def tap(request: Request, kind: str = "Workload", name: str = "",
                  namespace: str = "default", path: str = "", method: str = "",
                  status: str = "", authority: str = "", direction: str = "",
                  rate: float = 10.0, headers: bool = False,
                  duration: float = MAX_DURATION) -> Any:
        k = KINDS.get(kind.lower())
        if k is None:
            return _error(400, f"kind: {kind[:40]!r} is not one of Workload (deploy), "
                               f"Service (svc)")
        if not name:
            return _error(400, "name: required (tulle tap deploy/NAME or svc/NAME)")
        for field, value in (("name", name), ("namespace", namespace), ("path", path),
                             ("method", method), ("authority", authority)):
            if len(value) > MAX_PARAM or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
                return _error(400, f"{field}: too long or not printable")
        if path and not path.startswith("/"):
            return _error(400, "path: must start with '/'")
        smin = smax = 0
        if status:
            try:
                smin, smax = parse_status(status)
            except ValueError as exc:
                return _error(400, f"status: {exc}")
        if direction not in ("", "inbound", "outbound"):
            return _error(400, "direction: inbound or outbound")
        if not rate > 0:  # (NaN too)
            return _error(400, "rate: must be more than 0")
        if not 0 < duration <= MAX_DURATION:
            return _error(400, f"duration: more than 0 and at most {MAX_DURATION:g} seconds")
        principal = request.scope.get("tulle.principal")
        if headers and not (isinstance(principal, Principal) and principal.role is Role.ADMIN):
            return _error(403, "headers: request headers are shown to admin tokens only")
        mesh = await mesh_tap_settings(store)
        if not mesh.enabled:
            return _error(403, "taps are off in this mesh (Mesh.spec.observability.tap.enabled)")
        if headers and not mesh.headers:
            return _error(403, "headers: not shown in this mesh "
                               "(Mesh.spec.observability.tap.headers)")
        rate = min(rate, mesh.maxRate)
        dir_: Literal["", "inbound", "outbound"] = direction  # type: ignore[assignment]
        try:
            watch = broker.open(TapTarget(k, namespace, name), path_prefix=path,
                                method=method, status_min=smin, status_max=smax,
                                authority=authority, direction=dir_, rate=rate,
                                headers=headers, reader=_reader(principal))
        except TapError as exc:
            return _error(exc.status, str(exc))

        async def lines() -> AsyncIterator[bytes]:
            loop = asyncio.get_running_loop()
            try:
                yield _line({"type": "started", "id": watch.id,
                             "target": {"kind": k, "namespace": namespace, "name": name},
                             "rate": watch.rate,
                             "proxies": sorted(set(watch.sessions.values())),
                             "untapped": broker.untapped(watch)})
                end = loop.time() + duration
                beat = loop.time() + heartbeat
                while True:
                    now = loop.time()
                    if now >= end:
                        yield _line({"type": "end", "reason": "duration"})
                        return
                    if now >= beat:
                        if isinstance(principal, Principal) and not await tokens.still_valid(
                                principal):
                            yield _line({"type": "end", "reason": "the token was revoked"})
                            return
                        if not (await mesh_tap_settings(store)).enabled:
                            yield _line({"type": "end", "reason": "taps turned off in the "
                                         "mesh (Mesh.spec.observability.tap.enabled)"})
                            return
                        broker.renew(watch)
                        beat = now + heartbeat
                        yield _line({"type": "heartbeat"})
                    try:
                        item = await asyncio.wait_for(watch.queue.get(),
                                                      max(0.0, min(end, beat) - now))
                    except TimeoutError:
                        continue
                    yield _line(item)
                    if watch.dropped:
                        yield _line({"type": "dropped", "proxy": "control-plane",
                                     "count": watch.dropped})
                        watch.dropped = 0
            finally:
                broker.close(watch)

        return StreamingResponse(lines(), media_type="application/x-ndjson",
                                 headers={"cache-control": "no-store"})


__all__ = ["KINDS", "add_tap_routes", "parse_status"]
