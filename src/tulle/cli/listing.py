"""Reading a whole list from the API in pages, as kubectl does (`--chunk-size`, ADR 0120).

Why its own module: `tulle get` lists, and its `--watch` lists again after a dropped
connection (`cli/watch.py`); both read the same way.  A control plane from before paging
ignores `limit` and answers the whole list without `metadata.continue`: one page.
"""

from __future__ import annotations

from typing import Any

from tulle.cli.client import APIError, call

CHUNK_SIZE = 500
"""Objects asked for per page by default (kubectl's `--chunk-size`)."""
MAX_PAGES = 100_000
"""Pages read for one list at most (a control plane handing out tokens without end)."""


def read_pages(srv: str, path: str, query: dict[str, Any], chunk_size: int = CHUNK_SIZE
               ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every item of the list at `path`, read in pages of `chunk_size` (0: one answer) while
    the control plane says more follow (ADR 0120), and the first page's answer (its
    `metadata` and anything else it carries)."""
    items: list[dict[str, Any]] = []
    query = dict(query)
    if chunk_size:
        query["limit"] = chunk_size
    first: dict[str, Any] | None = None
    for _ in range(MAX_PAGES):
        answer = call(srv, "GET", path, query=query)
        items.extend(answer["items"])
        if first is None:
            first = answer
        token = (answer.get("metadata") or {}).get("continue")
        if not token or token == query.get("continue"):
            return items, first
        query["continue"] = token
    raise APIError(0, {"error": f"listing {path}: still more after {MAX_PAGES:,} pages"})


def list_all(srv: str, type_: str, namespace: str | None, selector: str | None,
             chunk_size: int = CHUNK_SIZE) -> tuple[list[dict[str, Any]], str | None]:
    """The items and the revision the list reflects (where `--watch` continues from): with
    pages, the first page's revision -- a watch from there misses nothing a later page may
    not show (each page reads the store as it is then)."""
    items, first = read_pages(srv, f"/api/v1/resources/{type_}",
                              {"namespace": namespace, "labelSelector": selector}, chunk_size)
    md = first.get("metadata") or {}
    return items, str(md.get("resourceVersion") or "") or None


__all__ = ["CHUNK_SIZE", "MAX_PAGES", "list_all", "read_pages"]
