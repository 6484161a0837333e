"""REST endpoints for bootstrap tokens (ADR 0028):

    POST   /api/v1/tokens                     {"workload", "namespace", "serviceAccount"?,
                                               "labels"?, "ttlSeconds"?} -> 201 with the token
    DELETE /api/v1/tokens/{namespace}/{id}    revoke

Why through the API and not against the store from the CLI: the token is signed with a secret
derived from the CA key, which only the control plane holds; and an HA pair shares the store,
so any replica can issue or revoke.  The token text appears in exactly one place, the 201 body
of its issue, for the operator who asked; it is never stored or logged.  Who may call these is
the REST API's authentication (Z2: admin role).

The service account and labels default to those of the declared Workload, if any, else
`default` and none.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import Body, FastAPI
from fastapi.responses import JSONResponse

from tulle.controlplane.api.apply import error as _error
from tulle.controlplane.ca.spiffe import SpiffeId
from tulle.controlplane.ca.tokens import DEFAULT_TTL, TokenService
from tulle.controlplane.store.errors import NotFoundError
from tulle.controlplane.store.protocol import ResourceStore


def _str_map(value: Any) -> dict[str, str] | None:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return None
    return dict(value)


def add_token_routes(app: FastAPI, store: ResourceStore, tokens: TokenService) -> None:
    @app.post("/api/v1/tokens", status_code=201, response_model=None)
    async def issue_token(body: dict[str, Any] = Body(...)) -> Any:  # noqa: B008
        workload, namespace = body.get("workload"), body.get("namespace", "default")
        if not isinstance(workload, str) or not workload:
            return _error(422, "workload: required")
        if not isinstance(namespace, str) or not namespace:
            return _error(422, "namespace: must be a name")
        try:
            declared = await store.get("Workload", namespace, workload)
        except NotFoundError:
            declared = {}
        sa = body.get("serviceAccount") or (declared.get("spec") or {}).get(
            "serviceAccount") or "default"
        labels = _str_map(body.get("labels", (declared.get("metadata") or {}).get(
            "labels") or {}))
        if labels is None:
            return _error(422, "labels: must map strings to strings")
        ttl_s = body.get("ttlSeconds", DEFAULT_TTL.total_seconds())
        if not isinstance(ttl_s, int | float) or isinstance(ttl_s, bool):
            return _error(422, "ttlSeconds: must be a number")
        try:
            spiffe = SpiffeId("cluster.local", namespace, str(sa))  # names checked here
            token, claims = await tokens.issue(namespace, workload, spiffe.service_account,
                                               labels=labels,
                                               ttl=dt.timedelta(seconds=ttl_s))
        except ValueError as exc:
            return _error(422, str(exc))
        return {"token": token, "id": claims.id, "namespace": namespace,
                "workload": workload, "serviceAccount": claims.service_account,
                "expiresAt": claims.expires}

    @app.delete("/api/v1/tokens/{namespace}/{token_id}", response_model=None)
    async def revoke_token(namespace: str, token_id: str) -> Any:
        try:
            await tokens.revoke(namespace, token_id)
        except NotFoundError:
            return JSONResponse({"error": f"no outstanding token {token_id} in {namespace}"},
                                status_code=404)
        return {"id": token_id, "namespace": namespace, "revoked": True}
