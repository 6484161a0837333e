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


def list_all(srv: str, type_: str, namespace: str | None, selector: str | None,
                 chunk_size: int = CHUNK_SIZE) -> tuple[list[dict[str, Any]], str | None]:
    """The items and the revision the list reflects (where `--watch` continues from): read
    in pages of `chunk_size` (0: one answer) while the control plane says more follow (ADR
    0120).  With pages, the first page's revision: a watch from there misses nothing a later
    page may not show (each page reads the store as it is then)."""
    items: list[dict[str, Any]] = []
    query: dict[str, Any] = {"namespace": namespace, "labelSelector": selector}
    if chunk_size:
        query["limit"] = chunk_size
    revision: str | None = None
    for _ in range(MAX_PAGES):
        answer = call(srv, "GET", f"/api/v1/resources/{type_}", query=query)
        items.extend(answer["items"])
        md = answer.get("metadata") or {}
        if revision is None:
            revision = str(md.get("resourceVersion") or "") or None
        token = md.get("continue")
        if not token or token == query.get("continue"):
            return items, revision
        query["continue"] = token
    raise APIError(0, {"error": f"listing {type_}: still more after {MAX_PAGES:,} pages"})


__all__ = ["CHUNK_SIZE", "MAX_PAGES", "list_all"]
