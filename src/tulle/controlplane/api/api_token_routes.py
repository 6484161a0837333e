"""`/api/v1/api-tokens`: create, list and revoke API tokens (admin only, see auth.py).

(`/api/v1/api-tokens` is the proxies' bootstrap tokens: `bootstrap_tokens.py`.)

    POST   /api/v1/api-tokens      {"role": "read-only" | "admin", "name": "..."}
                                   -> the token, shown this once, and its record
    GET    /api/v1/api-tokens      records: id, name, role, created (never a secret or hash)
    DELETE /api/v1/api-tokens/{id} revoke: the token is refused from the next request on
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from tulle.controlplane.api.api_tokens import Role, TokenStore
from tulle.controlplane.api.apply import error as _error
from tulle.controlplane.api.body import json_object
from tulle.controlplane.store.errors import NotFoundError


def api_tokens_router(tokens: TokenStore) -> APIRouter:
    router = APIRouter()

    @router.post("/api/v1/api-tokens", response_model=None, status_code=201)
    async def create_token(body: dict[str, Any] = Depends(json_object)) -> Any:  # noqa: B008
        unknown = sorted(set(body) - {"role", "name"})
        if unknown:
            return _error(422, f"{unknown[0]}: unknown field (known: role, name)")
        try:
            role = Role(str(body.get("role")))
        except ValueError:
            return _error(422, "role: must be one of read-only, admin")
        name = body.get("name", "")
        if not isinstance(name, str):
            return _error(422, "name: must be a string")
        try:
            token, info = await tokens.create(role, name)
        except ValueError as exc:
            return _error(422, str(exc))
        return JSONResponse({"token": token, **info.to_dict()}, status_code=201)

    @router.get("/api/v1/api-tokens")
    async def list_tokens() -> dict[str, Any]:
        return {"items": [t.to_dict() for t in await tokens.list()]}

    @router.delete("/api/v1/api-tokens/{tid}", response_model=None)
    async def revoke_token(tid: str) -> Any:
        try:
            return (await tokens.revoke(tid)).to_dict()
        except NotFoundError:
            return _error(404, f"no token with id {tid!r}" if len(tid) <= 16
                          else "no such token id (ids are 16 hex digits)")

    return router
