"""The JSON body of a write, read strictly, and refusals in the API's own shape.

FastAPI's `Body(...)` reads JSON with `json.loads` and its defaults: a key given twice keeps
its last value and drops the other without a word (`"ports": [...], "ports": [...]`), and
everything it cannot read -- bytes that are not UTF-8, nesting past the interpreter's
recursion limit, an integer of more than 4,300 digits -- becomes
`{"detail": "There was an error parsing the body"}`, the one answer of the API that is not
`{"error", "details"}` and says neither where nor why; a wrong `Content-Type` was answered
with the whole body echoed back.  `read_json` refuses each of these with a 400 (415 for the
type) that names the reason and, where there is one, the field path (ADR 0102).

`NaN`, `Infinity` and `1e999` are read (Python's JSON does, so does `tulle apply` send a
YAML `.nan`): validation then refuses them with the field's path.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tulle.api.errors import PathSegment, render_path
from tulle.controlplane.api.apply import error

MAX_DEPTH = 100
"""Nesting of objects and arrays; no resource comes near it (the YAML reader's bound too)."""
MAX_DOCUMENT_VALUES = 100_000
"""Values (scalars, objects, arrays) in one document.  The largest route Gateway API allows
(128 matches, each with 16 header and 16 query matches) has about 15,000; a million values
in one map cost ~1 GB of validation errors before this bound (ADR 0102)."""


class BodyError(Exception):
    """A body refused before it is looked at: HTTP status, reason, field path ("" if none)."""

    def __init__(self, status: int, reason: str, path: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.path = path

    def response(self) -> JSONResponse:
        return error(self.status, f"invalid request body: {self.reason}",
                     [{"path": self.path, "message": self.reason}])


def parse_json(raw: bytes) -> Any:
    """The value of `raw`; `BodyError` for anything JSON, or this API, cannot hold."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(400, f"not UTF-8 (byte {exc.start})") from None
    twice: dict[int, list[str]] = {}

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                twice.setdefault(id(out), []).append(key)
            out[key] = value
        return out

    try:
        value = json.loads(text, object_pairs_hook=pairs)
    except RecursionError:
        raise BodyError(400, f"nested deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise BodyError(400, f"invalid JSON: {exc.msg} (line {exc.lineno}, column "
                             f"{exc.colno})") from None
    except ValueError as exc:  # int() of a huge literal
        limit = sys.get_int_max_str_digits()
        raise BodyError(400, f"a number of more than {limit} digits ({exc})"[:200]) from None
    _walk(value, twice)
    return value


def _walk(value: Any, twice: dict[int, list[str]]) -> None:
    """Depth bound and duplicate keys, with the path of the first offender (iterative: the
    depth is what is being checked)."""
    stack: list[tuple[Any, list[PathSegment]]] = [(value, [])]
    while stack:
        node, path = stack.pop()
        if len(path) > MAX_DEPTH:
            raise BodyError(400, f"nested deeper than {MAX_DEPTH} levels", render_path(path))
        if isinstance(node, dict):
            if id(node) in twice:
                key = twice[id(node)][0]
                raise BodyError(400, f"key {json.dumps(key)} given twice; keep one",
                                render_path([*path, key]))
            stack.extend((v, [*path, k]) for k, v in node.items()
                         if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend((v, [*path, i]) for i, v in enumerate(node)
                         if isinstance(v, dict | list))


def check_documents(docs: list[Any]) -> None:
    """`BodyError` naming the first document with more than `MAX_DOCUMENT_VALUES` values."""
    for i, doc in enumerate(docs):
        count = 1
        stack = [doc]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                count += len(node)
                stack.extend(v for v in node.values() if isinstance(v, dict | list))
            elif isinstance(node, list):
                count += len(node)
                stack.extend(v for v in node if isinstance(v, dict | list))
            if count > MAX_DOCUMENT_VALUES:
                raise BodyError(413, f"more than {MAX_DOCUMENT_VALUES} values in one document",
                                render_path(["documents", i]))


async def read_json(request: Request) -> Any:
    """The request's JSON body; `BodyError` when it is not `application/json` or not JSON
    this API reads."""
    ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if ctype != "application/json":
        raise BodyError(415, "send the body as Content-Type: application/json")
    return parse_json(await request.body())


async def json_object(request: Request) -> dict[str, Any]:
    """A FastAPI dependency: the body, read by `read_json`, which must be an object."""
    value = await read_json(request)
    if not isinstance(value, dict):
        raise BodyError(400, "must be a JSON object")
    return value


async def optional_json_object(request: Request) -> dict[str, Any]:
    """`json_object`, or `{}` for an empty body."""
    if not await request.body():
        return {}
    return await json_object(request)


async def body_refused(_: Request, exc: Exception) -> JSONResponse:
    """The answer to a `BodyError` a dependency raised."""
    assert isinstance(exc, BodyError)
    return exc.response()


async def http_error(_: Request, exc: Exception) -> JSONResponse:
    """Starlette's and FastAPI's own HTTP errors (404 for an unknown path, 405, a body the
    framework could not read) in the API's shape."""
    assert isinstance(exc, StarletteHTTPException)
    return JSONResponse({"error": str(exc.detail), "details": []}, status_code=exc.status_code,
                        headers=dict(exc.headers or {}))


async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's validation errors (query and path parameters) in the API's shape: 400, each
    with its place and reason, never the value sent (it may be a secret pasted in the wrong
    place)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    details = [{"path": render_path([s for s in e.get("loc", ()) if isinstance(s, str | int)]),
                "message": str(e.get("msg", "invalid")).lower()} for e in errors]
    return error(400, "invalid request: " + "; ".join(
        f"{d['path']}: {d['message']}" for d in details), details)
