"""`POST /api/v1/apply`: many documents, one transaction.

The steps, each of which can refuse the whole request before anything is written:

1. every document is validated (422, errors per document with their field paths);
2. no kind/namespace/name appears twice (422, naming both documents: which copy should win
   is the user's call, not ours);
3. the current objects are read; a document carrying `metadata.resourceVersion` that is not
   the stored one is a conflict (409);
3b. the documents are compiled over the current state (`warnings.py`): whatever they would
   store but the mesh would not enforce is a warning of its document, and so is what they
   add that a connected proxy of an older build will not run (`skew_warnings.py`); with
   `strict` any warning refuses the whole apply (422).  This runs on a worker thread over
   the state captured at this step, one apply at a time (`apply_checks.py`): the event loop
   goes on serving the proxies and the API meanwhile;
4. what changed goes to the store as one `batch`: creates for new objects, updates over the
   version read in step 3.  Someone writing one of these objects between 3 and 4 (also while
   3b runs) makes the store refuse the batch (409 naming the document); nothing is written.
   A write of the object's status only (the control plane's conditions, virtual IPs) is not
   such a change: the batch is written again over the newer version (`status_races.py`).

So an apply is all or nothing, also when the control plane dies during it: the store commits
the batch or not at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from functools import partial
from typing import Any

from fastapi.responses import JSONResponse

from tulle.api.errors import ValidationError
from tulle.api.registry import KindInfo, parse, resolve
from tulle.controlplane.api.apply_checks import ApplyChecks, Checks
from tulle.controlplane.api.status_races import STATUS_RACES, Planned, moved_on_in_status
from tulle.controlplane.api.warnings import trust_domain_change, warnings
from tulle.controlplane.store.errors import (
    AlreadyExistsError,
    BatchError,
    ConflictError,
    InvalidObjectError,
    NotFoundError,
)
from tulle.controlplane.store.protocol import BatchOp, Obj, ResourceStore

MAX_DOCUMENTS = 10_000
"""Documents in one apply; more is refused (413) before any is looked at."""

Key = tuple[str, str | None, str]


def error(status: int, message: str, details: list[Any] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "details": details or []}, status_code=status)


def canonical(info: KindInfo, doc: dict[str, Any]) -> Obj:
    """The validated document as the store keeps it (defaults filled, our field names).

    `status` is the control plane's: ignored on input (not even validated), so that what
    `tulle get -o yaml` printed can be applied again unchanged."""
    model = parse({k: v for k, v in doc.items() if k != "status"})
    out: Obj = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    md = out.setdefault("metadata", {})
    if info.namespaced:
        md["namespace"] = md.get("namespace") or "default"
    else:
        md.pop("namespace", None)
    rv = (doc.get("metadata") or {}).get("resourceVersion")
    if rv is not None:
        md["resourceVersion"] = str(rv)
    out.pop("status", None)
    return out


def same(current: Obj, desired: Obj) -> bool:
    cm, dm = current.get("metadata") or {}, desired.get("metadata") or {}
    return (current.get("spec") == desired.get("spec")
            and (cm.get("labels") or {}) == (dm.get("labels") or {})
            and (cm.get("annotations") or {}) == (dm.get("annotations") or {})
            and current.get("apiVersion") == desired.get("apiVersion"))


def doc_errors(index: int, source: str | None, doc: Any,
               errors: list[dict[str, str]]) -> dict[str, Any]:
    md = (doc.get("metadata") or {}) if isinstance(doc, dict) else {}
    return {"document": index, "source": source,
            "kind": doc.get("kind") if isinstance(doc, dict) else None,
            "name": md.get("name"), "namespace": md.get("namespace"), "errors": errors}


def _key(info: KindInfo, obj: Obj) -> Key:
    md = obj["metadata"]
    return (info.kind, md.get("namespace"), md["name"])


async def apply_documents(store: ResourceStore, docs: list[Any], sources: list[Any],
                          dry_run: bool, *, checks: ApplyChecks | None = None,
                          strict: bool = False) -> JSONResponse:
    if len(docs) > MAX_DOCUMENTS:
        return error(413, f"{len(docs)} documents in one apply; at most {MAX_DOCUMENTS}")

    def source(i: int) -> str | None:
        s = sources[i] if i < len(sources) else None
        return s if isinstance(s, str) else None

    # 1. validate everything
    prepared: list[tuple[int, KindInfo, Obj]] = []
    invalid: list[dict[str, Any]] = []
    for i, doc in enumerate(docs):
        try:
            if not isinstance(doc, dict):
                parse(doc)  # raises with a clear message
                raise AssertionError
            info = resolve(str(doc.get("kind", "")))
            prepared.append((i, info, canonical(info, doc)))
        except ValidationError as exc:
            invalid.append(doc_errors(i, source(i), doc, [
                {"path": e.path, "message": e.message} for e in exc.errors]))
        except KeyError as exc:
            invalid.append(doc_errors(i, source(i), doc, [
                {"path": "kind", "message": str(exc.args[0])}]))
    if invalid:
        return error(422, f"{len(invalid)} of {len(docs)} documents are invalid; "
                     "nothing was applied", invalid)

    # 2. one object, one document
    first: dict[Key, int] = {}
    duplicates: list[dict[str, Any]] = []
    for i, info, obj in prepared:
        j = first.setdefault(_key(info, obj), i)
        if j != i:
            duplicates.append(doc_errors(i, source(i), obj, [{
                "path": "metadata.name",
                "message": f"document {i} and document {j} are the same object "
                           f"({info.kind} {obj['metadata'].get('namespace') or ''}/"
                           f"{obj['metadata']['name']}); keep one of them"}]))
    if duplicates:
        return error(422, "duplicate documents: nothing was applied", duplicates)

    # 3. current versions: a stale resourceVersion rejects the whole apply
    stored = await _current(store, [(info, obj) for _, info, obj in prepared])
    plan: list[tuple[int, KindInfo, Obj, Obj | None]] = []
    conflicts: list[dict[str, Any]] = []
    pinned: set[int] = set()  # (documents that name their resourceVersion)
    for i, info, obj in prepared:
        md = obj["metadata"]
        current = stored.get(_key(info, obj))
        want = md.get("resourceVersion")
        if want is not None:
            pinned.add(i)
        have = (current or {}).get("metadata", {}).get("resourceVersion")
        if want is not None and want != have:
            conflicts.append(doc_errors(i, source(i), obj, [{
                "path": "metadata.resourceVersion",
                "message": f"the object was changed (now at {have or 'deleted'}, "
                           f"you have {want}); get it again and re-apply your edit"}]))
        plan.append((i, info, obj, current))
    if conflicts:
        return error(409, "conflict: nothing was applied", conflicts)

    # 3b. what would be stored but not enforced, and a trust domain that would break mTLS
    # (on the worker thread, over the state of now: the versions in `plan` stay those read)
    work = partial(_warnings, prepared, plan)
    warned = await checks.run(work) if checks is not None else work(Checks())
    if strict and warned:
        by_index = {i: obj for i, _, obj in prepared}
        return error(422, f"{len(warned)} of {len(docs)} documents would be stored but not "
                     "(wholly) enforced; nothing was applied (strict)",
                     [doc_errors(i, source(i), by_index[i], [
                         {"path": "status", "message": line} for line in lines])
                      for i, lines in sorted(warned.items())])

    # 4. one transaction for everything that changes
    results: list[dict[str, Any]] = []
    ops: list[BatchOp] = []
    written: list[tuple[int, int]] = []  # (position in results, document index) per op
    planned: list[Planned] = []  # (the same, per op)
    for i, info, obj, current in plan:
        md = obj["metadata"]
        ident: dict[str, Any] = {"kind": info.kind, "namespace": md.get("namespace"),
                                 "name": md["name"]}
        if i in warned:
            ident["warnings"] = warned[i]
        if current is not None and same(current, obj):
            results.append({**ident, "result": "unchanged"})
            continue
        results.append({**ident, "result": "created" if current is None else "configured"})
        if dry_run:
            results[-1]["dryRun"] = True
            continue
        if current is not None:
            md["resourceVersion"] = current["metadata"]["resourceVersion"]
        written.append((len(results) - 1, i))
        planned.append((i, info, obj, current))
        ops.append(BatchOp("create" if current is None else "update", obj))
    if ops:
        for attempt in range(STATUS_RACES + 1):
            try:
                done = await store.batch(ops)
                break
            except BatchError as exc:
                if attempt == STATUS_RACES or not await moved_on_in_status(
                        exc, planned, pinned, partial(_current, store), _key):
                    return _refused(exc, written, docs, source)
        for (at, _), obj in zip(written, done, strict=True):
            results[at]["resourceVersion"] = obj["metadata"]["resourceVersion"]
    return JSONResponse({"results": results}, status_code=200)


def _warnings(prepared: Sequence[tuple[int, KindInfo, Obj]],
              plan: Sequence[tuple[int, KindInfo, Obj, Obj | None]],
              checks: Checks) -> dict[int, list[str]]:
    """Step 3b: per document index, its warnings.  Reads only the apply's own objects and
    what `checks` were bound to, so it may run off the event loop."""
    warned = warnings(prepared, checks.preview) if checks.preview is not None else {}
    for i, info, obj, current in plan:
        if info.kind == "Mesh" and (line := trust_domain_change(current, obj)) is not None:
            warned.setdefault(i, []).append(line)
    if checks.skew is not None:  # what older proxies will not run of what this apply changes
        changed = [i for i, _, obj, current in plan if current is None or not same(current, obj)]
        for i, lines in checks.skew({i: obj for i, _, obj in prepared}, changed).items():
            warned.setdefault(i, []).extend(lines)
    return warned


LIST_FROM = 16
"""Documents of one kind and namespace from which their current objects are read with one
`list` rather than one `get` each (3,000 gets on PostgreSQL are 3,000 round trips)."""


async def _current(store: ResourceStore, objs: list[tuple[KindInfo, Obj]]) -> dict[Key, Obj]:
    """The stored objects the documents name (absent ones are missing from the result)."""
    groups: dict[tuple[str, str | None], list[Key]] = {}
    for info, obj in objs:
        key = _key(info, obj)
        groups.setdefault((key[0], key[1]), []).append(key)
    found: dict[Key, Obj] = {}
    for (kind, namespace), keys in groups.items():
        if len(keys) >= LIST_FROM:
            items, _ = await store.list(kind, namespace)
            wanted = set(keys)
            for item in items:
                md = item["metadata"]
                key = (kind, md.get("namespace"), md["name"])
                if key in wanted:
                    found[key] = item
            continue
        for key in keys:
            with contextlib.suppress(NotFoundError):
                found[key] = await store.get(*key)
    return found


def _refused(exc: BatchError, written: list[tuple[int, int]], docs: list[Any],
             source: Any) -> JSONResponse:
    """The store refused the batch: name the document whose write failed."""
    i = written[exc.index][1]
    cause = exc.error
    if isinstance(cause, ConflictError):
        path, message = "metadata.resourceVersion", (
            f"the object was changed during this apply (now at {cause.current}); "
            "get it again and re-apply your edit")
    elif isinstance(cause, AlreadyExistsError):
        path, message = "metadata.name", "the object was created during this apply; re-apply"
    elif isinstance(cause, NotFoundError):
        path, message = "metadata.name", "the object was deleted during this apply; re-apply"
    else:
        status = 422 if isinstance(cause, InvalidObjectError) else 409
        return error(status, f"document {i}: {cause}; nothing was applied",
                     [doc_errors(i, source(i), docs[i], [{"path": "", "message": str(cause)}])])
    return error(409, "conflict: nothing was applied",
                 [doc_errors(i, source(i), docs[i], [{"path": path, "message": message}])])
