"""REST API for the CLI and (later) the dashboard.  Kubernetes semantics, JSON bodies.

    GET    /api/v1/resources/{type}                     list (?namespace=, ?labelSelector=)
    GET    /api/v1/resources/{type}/{name}              one (?namespace=)
    DELETE /api/v1/resources/{type}/{name}              (?namespace=, ?resourceVersion=)
    POST   /api/v1/apply?dryRun=false                   {"documents": [...], "sources": [...]}
    GET    /api/v1/proxies                              connected proxies and their versions
    GET    /api/v1/proxies/{namespace}/{name}/config    the snapshot a proxy runs
    GET    /healthz, /readyz

`{type}` is any name kubectl would accept: plural, singular, kind or short name.  Errors are
JSON `{"error": ..., "details": [...]}` with the HTTP status Kubernetes would use (404, 409,
422).  `apply` validates every document before writing any: one invalid document rejects the
whole request.  A document carrying `metadata.resourceVersion` is applied only over that
version (a concurrent edit is reported as 409, never overwritten); without one, apply
reads the current version and writes over it with optimistic concurrency, so two applies that
race are detected too.
"""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import Body, FastAPI, Query
from fastapi.responses import JSONResponse

from tulle.api.errors import ValidationError
from tulle.api.registry import KindInfo, parse, resolve
from tulle.controlplane.push.server import PushServer, SnapshotCache
from tulle.controlplane.reconcile import Reconciler
from tulle.controlplane.store.errors import (
    AlreadyExistsError,
    ConflictError,
    NotFoundError,
)
from tulle.controlplane.store.protocol import Obj, ResourceStore


def _error(status: int, message: str, details: list[Any] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "details": details or []}, status_code=status)


def _kind(type_: str) -> KindInfo | JSONResponse:
    try:
        return resolve(type_)
    except KeyError as exc:
        return _error(404, str(exc.args[0]))


def _ns(info: KindInfo, namespace: str | None) -> str | None:
    return (namespace or "default") if info.namespaced else None


def _canonical(info: KindInfo, doc: dict[str, Any]) -> Obj:
    """The validated document as the store keeps it (defaults filled, our field names)."""
    model = parse(doc)
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


def _same(current: Obj, desired: Obj) -> bool:
    cm, dm = current.get("metadata") or {}, desired.get("metadata") or {}
    return (current.get("spec") == desired.get("spec")
            and (cm.get("labels") or {}) == (dm.get("labels") or {})
            and (cm.get("annotations") or {}) == (dm.get("annotations") or {})
            and current.get("apiVersion") == desired.get("apiVersion"))


def create_app(store: ResourceStore, push: PushServer, cache: SnapshotCache,
               reconciler: Reconciler | None = None) -> FastAPI:
    app = FastAPI(title="Tulle control plane", version="v1",
                  description="Declare mesh intent; see proxies and what they run.")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=None)
    async def readyz() -> dict[str, str] | JSONResponse:
        if reconciler is not None and not reconciler.ready.is_set():
            return _error(503, "not ready: initial compilation pending")
        return {"status": "ready"}

    @app.get("/api/v1/resources/{type_}", response_model=None)
    async def list_resources(type_: str, namespace: str | None = None,
                             labelSelector: str | None = None) -> Any:
        info = _kind(type_)
        if isinstance(info, JSONResponse):
            return info
        try:
            items, revision = await store.list(
                info.kind, namespace if info.namespaced else None, labelSelector or None)
        except ValueError as exc:
            return _error(400, f"invalid labelSelector: {exc}")
        return {"apiVersion": info.api_version, "kind": f"{info.kind}List",
                "metadata": {"resourceVersion": str(revision)}, "items": items}

    @app.get("/api/v1/resources/{type_}/{name}", response_model=None)
    async def get_resource(type_: str, name: str, namespace: str | None = None) -> Any:
        info = _kind(type_)
        if isinstance(info, JSONResponse):
            return info
        try:
            return await store.get(info.kind, _ns(info, namespace), name)
        except NotFoundError as exc:
            return _error(404, str(exc))

    @app.delete("/api/v1/resources/{type_}/{name}", response_model=None)
    async def delete_resource(type_: str, name: str, namespace: str | None = None,
                              resourceVersion: str | None = None) -> Any:
        info = _kind(type_)
        if isinstance(info, JSONResponse):
            return info
        try:
            return await store.delete(info.kind, _ns(info, namespace), name, resourceVersion)
        except NotFoundError as exc:
            return _error(404, str(exc))
        except ConflictError as exc:
            return _error(409, str(exc))

    @app.post("/api/v1/apply", response_model=None)
    async def apply(body: dict[str, Any] = Body(...),  # noqa: B008
                    dry_run: bool = Query(False, alias="dryRun")) -> Any:
        docs = body.get("documents")
        if not isinstance(docs, list):
            return _error(400, "body must be {\"documents\": [...]}")
        sources = body.get("sources") or []
        prepared: list[tuple[KindInfo, Obj]] = []
        invalid: list[dict[str, Any]] = []
        for i, doc in enumerate(docs):
            source = sources[i] if i < len(sources) else None
            try:
                if not isinstance(doc, dict):
                    parse(doc)  # raises with a clear message
                    raise AssertionError
                info = resolve(str(doc.get("kind", "")))
                prepared.append((info, _canonical(info, doc)))
            except ValidationError as exc:
                invalid.append(_doc_errors(i, source, doc, [
                    {"path": e.path, "message": e.message} for e in exc.errors]))
            except KeyError as exc:
                invalid.append(_doc_errors(i, source, doc, [
                    {"path": "kind", "message": str(exc.args[0])}]))
        if invalid:
            return _error(422, f"{len(invalid)} of {len(docs)} documents are invalid; "
                          "nothing was applied", invalid)
        # Read current versions first so that a stale resourceVersion rejects the whole apply.
        plan: list[tuple[KindInfo, Obj, Obj | None]] = []
        conflicts: list[dict[str, Any]] = []
        for i, (info, obj) in enumerate(prepared):
            md = obj["metadata"]
            try:
                current: Obj | None = await store.get(info.kind, md.get("namespace"), md["name"])
            except NotFoundError:
                current = None
            want = md.get("resourceVersion")
            have = (current or {}).get("metadata", {}).get("resourceVersion")
            if want is not None and want != have:
                conflicts.append(_doc_errors(i, None, obj, [{
                    "path": "metadata.resourceVersion",
                    "message": f"the object was changed (now at {have or 'deleted'}, "
                               f"you have {want}); get it again and re-apply your edit"}]))
            plan.append((info, obj, current))
        if conflicts:
            return _error(409, "conflict: nothing was applied", conflicts)
        results = []
        for info, obj, current in plan:
            md = obj["metadata"]
            ident = {"kind": info.kind, "namespace": md.get("namespace"), "name": md["name"]}
            if current is not None and _same(current, obj):
                results.append({**ident, "result": "unchanged"})
                continue
            if dry_run:
                results.append({**ident, "result": "created" if current is None
                                else "configured", "dryRun": True})
                continue
            try:
                if current is None:
                    stored = await store.create(obj)
                    results.append({**ident, "result": "created",
                                    "resourceVersion": stored["metadata"]["resourceVersion"]})
                else:
                    md["resourceVersion"] = current["metadata"]["resourceVersion"]
                    stored = await store.update({**obj, "status": current.get("status")})
                    results.append({**ident, "result": "configured",
                                    "resourceVersion": stored["metadata"]["resourceVersion"]})
            except (ConflictError, AlreadyExistsError) as exc:
                results.append({**ident, "result": "conflict", "error": str(exc)})
        status = 409 if any(r["result"] == "conflict" for r in results) else 200
        return JSONResponse({"results": results}, status_code=status)

    @app.get("/api/v1/proxies")
    async def proxies() -> dict[str, Any]:
        items = []
        known = {s.namespace + "/" + s.name: s for s in push.statuses()}
        for key in sorted(set(known) | {f"{ns}/{n}" for ns, n in cache.proxies()}):
            ns, name = key.split("/", 1)
            st = known.get(key)
            cfg = cache.get((ns, name))
            row: dict[str, Any] = st.to_dict() if st else {
                "namespace": ns, "name": name, "connected": False}
            row["desiredVersion"] = cfg.version if cfg else None
            if reconciler is not None and (ns, name) in reconciler.errors:
                row["configError"] = reconciler.errors[(ns, name)]
            items.append(row)
        return {"items": items}

    @app.get("/api/v1/proxies/{namespace}/{name}/config", response_model=None)
    async def proxy_config(namespace: str, name: str) -> Any:
        """What the proxy runs: the snapshot it ACKed last (which may be older than the desired
        one, e.g. after a NACK); the desired one when it has ACKed nothing yet."""
        desired = cache.get((namespace, name))
        st = push.status.get((namespace, name))
        running = st.running if st is not None else None
        cfg = running or desired
        if cfg is None:
            return _error(404, f"no proxy config for workload {namespace}/{name}")
        return {"desiredVersion": desired.version if desired else None,
                "ackedVersion": st.acked_version if st else None,
                "source": "acked" if running is not None else "desired",
                "config": msgspec.to_builtins(cfg)}

    return app


def _doc_errors(index: int, source: str | None, doc: Any,
                errors: list[dict[str, str]]) -> dict[str, Any]:
    md = (doc.get("metadata") or {}) if isinstance(doc, dict) else {}
    return {"document": index, "source": source,
            "kind": doc.get("kind") if isinstance(doc, dict) else None,
            "name": md.get("name"), "errors": errors}
