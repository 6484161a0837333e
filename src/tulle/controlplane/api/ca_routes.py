"""REST endpoints for the mesh CA: rotation (ADR 0035); its findings are in check_routes.py.

    GET  /api/v1/ca                        the CA in force: roots, signer, rotation stage, and
                                           the connected proxies not moved yet
    POST /api/v1/ca/rotation               start a rotation: {} makes a new root, or
                                           {"certPem", "keyPem"} the operator's (admin)
    POST /api/v1/ca/rotation/advance       the next stage, once every connected proxy moved
                                           (?force=true skips the check) (admin)

Writes are admin-only by the API's role rule (every POST); reading is open to read-only tokens
and shows no key.  A refused operator CA answers 422 with the reason (never its key), a stage
that cannot be taken 409 naming what it waits for; either way nothing is written.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import Depends, FastAPI, Query

from tulle.controlplane.api.apply import error as _error
from tulle.controlplane.api.body import optional_json_object
from tulle.controlplane.ca.authority import CAError, CertificateAuthority
from tulle.controlplane.ca.keeper import CAKeeper
from tulle.controlplane.ca.rotation import CAState, RotationError, fingerprint, subject
from tulle.controlplane.push.server import PushServer

MAX_PEM_CHARS = 64 * 1024


def _ts(t: dt.datetime) -> int:
    return int(t.timestamp())


def _describe(state: CAState) -> dict[str, Any]:
    return {
        "stage": state.stage or "idle",
        "startedAt": state.started_at or None,
        "signing": {"subject": subject(state.signing.cert),
                    "fingerprint": state.signing_id(),
                    "notAfter": _ts(state.signing.cert.not_valid_after_utc)},
        "next": {"subject": subject(state.next.cert),
                 "fingerprint": fingerprint(state.next.cert)} if state.next else None,
        "trustBundle": state.bundle_id(),
        "roots": [{"subject": subject(r), "fingerprint": fingerprint(r),
                   "notAfter": _ts(r.not_valid_after_utc)} for r in state.roots],
    }


def add_ca_routes(app: FastAPI, keeper: CAKeeper, push: PushServer) -> None:
    async def status() -> dict[str, Any]:
        assert keeper.state is not None
        done = keeper.progress(await keeper.views())
        out = _describe(keeper.state)
        out.update(waitingFor=done.waiting_for or None, notMoved=[
            {"proxy": name, "reason": why} for name, why in done.pending.items()],
            canAdvance=done.done, rotatable=not keeper.from_files)
        return out

    @app.get("/api/v1/ca")
    async def ca_status() -> dict[str, Any]:
        return await status()

    @app.post("/api/v1/ca/rotation", response_model=None)
    async def rotation_start(body: dict[str, Any] = Depends(optional_json_object)) -> Any:  # noqa: B008
        cert_pem, key_pem = body.get("certPem"), body.get("keyPem")
        new = None
        if cert_pem is not None or key_pem is not None:
            if not isinstance(cert_pem, str) or not isinstance(key_pem, str):
                return _error(422, "certPem and keyPem: give both, as PEM text")
            if len(cert_pem) > MAX_PEM_CHARS or len(key_pem) > MAX_PEM_CHARS:
                return _error(422, f"certPem / keyPem: at most {MAX_PEM_CHARS} characters")
            try:
                new = CertificateAuthority.from_pem(cert_pem.encode(), key_pem.encode(),
                                                    where="the new CA")
            except CAError as exc:
                return _error(422, str(exc))
            if new.cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
                return _error(422, "the new CA: its certificate has expired")
            why = new.not_yet_valid()
            if why:
                return _error(422, f"the new CA: {why}; every peer would refuse what it signs "
                                   "until then")
        try:
            await keeper.begin(new)
        except RotationError as exc:
            return _error(409, str(exc))
        return await status()

    @app.post("/api/v1/ca/rotation/advance", response_model=None)
    async def rotation_advance(force: bool = Query(False)) -> Any:
        try:
            await keeper.advance(await keeper.views(), force=force)
        except RotationError as exc:
            return _error(409, str(exc))
        return await status()
