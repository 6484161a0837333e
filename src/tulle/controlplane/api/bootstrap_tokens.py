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

A token the proxy stream could only refuse is not issued: the request is refused (422, each
reason with the request field it is about) when the Workload the token's first hello would
register is invalid (`workload: must be a DNS-1123 subdomain ...`, the stream's own check,
`reconcile.workload_object` and the API registry) or its identity is the control plane's own
(`admission.not_reserved`, what the stream refuses it with).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from tulle.api.errors import ValidationError
from tulle.api.registry import parse
from tulle.controlplane.api.apply import error as _error
from tulle.controlplane.api.body import json_object
from tulle.controlplane.ca.admission import not_reserved
from tulle.controlplane.ca.authority import CsrError
from tulle.controlplane.ca.spiffe import DEFAULT_TRUST_DOMAIN, SpiffeId
from tulle.controlplane.ca.tokens import DEFAULT_TTL, TokenService
from tulle.controlplane.reconcile import workload_object
from tulle.controlplane.store.errors import NotFoundError
from tulle.controlplane.store.protocol import ResourceStore

REQUEST_FIELD = {"metadata.name": "workload", "metadata.namespace": "namespace",
                 "metadata.labels": "labels", "spec.serviceAccount": "serviceAccount"}
"""The registered Workload's fields, by the request field that sets them."""

ANNOUNCED_ADDRESS = "127.0.0.1"
"""Stands for the address the proxy announces in its hello (or its peer address): not known at
issue, and not the token's to decide."""


def _str_map(value: Any) -> dict[str, str] | None:
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return None
    return dict(value)


def claim_problems(namespace: str, workload: str, service_account: str,
                   labels: dict[str, str], trust_domain: str) -> list[dict[str, str]]:
    """Why the stream would refuse the first hello of a token with these claims, each reason
    with the request field it is about (`[]`: none).  The stream's checks themselves, run on
    what it would check: the Workload it would register and the identity it would sign.
    ValueError for names no SPIFFE ID can hold."""
    doc = workload_object({"name": workload, "namespace": namespace}, labels,
                          {"address": ANNOUNCED_ADDRESS, "serviceAccount": service_account})
    try:
        parse(doc)
    except ValidationError as exc:
        return [{"path": _request_path(e.path), "message": e.message} for e in exc.errors]
    try:
        not_reserved(SpiffeId(trust_domain, namespace, service_account))
    except CsrError as exc:
        return [{"path": "serviceAccount", "message": str(exc)}]
    return []


def _request_path(path: str) -> str:
    """`metadata.labels["a b"]` -> `labels["a b"]`: the field of the request, not the
    Workload's (the caller never wrote a Workload)."""
    for field, request in REQUEST_FIELD.items():
        if path == field or path.startswith((f"{field}.", f"{field}[")):
            return request + path[len(field):]
    return path


def add_token_routes(app: FastAPI, store: ResourceStore, tokens: TokenService,
                     trust_domain: Callable[[], str] = lambda: DEFAULT_TRUST_DOMAIN) -> None:
    """`trust_domain`: the mesh's, for the identity a token grants (the reconciler's)."""
    @app.post("/api/v1/tokens", status_code=201, response_model=None)
    async def issue_token(body: dict[str, Any] = Depends(json_object)) -> Any:  # noqa: B008
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
            problems = claim_problems(namespace, workload, str(sa), labels, trust_domain())
            if problems:
                return _error(422, "; ".join(f"{p['path']}: {p['message']}" for p in problems),
                              problems)
            spiffe = SpiffeId(trust_domain(), namespace, str(sa))  # names checked here
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
