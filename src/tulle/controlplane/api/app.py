"""REST API for the CLI and (later) the dashboard.  Kubernetes semantics, JSON bodies.

    GET    /api/v1/resources/{type}                     list (?namespace=, ?labelSelector=);
                                                 ?watch=true&resourceVersion=N streams the
                                                 changes after N (watch_routes.py)
    GET    /api/v1/resources/{type}/{name}              one (?namespace=)
    DELETE /api/v1/resources/{type}/{name}              (?namespace=, ?resourceVersion=)
    POST   /api/v1/apply?dryRun=false&strict=false      {"documents": [...], "sources": [...]}
    GET    /api/v1/proxies                              connected proxies and their versions
    GET    /api/v1/proxies/{namespace}/{name}/config    the snapshot a proxy runs
    POST   /api/v1/tokens, DELETE /api/v1/tokens/{namespace}/{id}   proxies' bootstrap tokens
                                                 (bootstrap_tokens.py)
    POST   /api/v1/api-tokens, GET /api/v1/api-tokens, DELETE /api/v1/api-tokens/{id}
                                                 API tokens (api_token_routes.py)
    GET    /api/v1/ca, POST /api/v1/ca/rotation[/advance]   CA rotation (ca_routes.py)
    GET    /api/v1/check                                `tulle check`'s findings (check_routes.py)
    GET    /api/v1/version, /api/v1/api-resources      what this server is and serves
                                                 (discovery_routes.py)
    GET    /api/v1/stat?kind=&name=&namespace=&window=   traffic per Service, workload and
                                                 edge over a sliding window (stat_routes.py)
    GET    /api/v1/tap?kind=&name=&...              live request records, JSON lines
                                                 (tap_routes.py)
    GET    /api/v1/topology, /api/v1/services/{ns}/{name}/attached, /dashboard/...
                                                 the dashboard (dashboard_routes.py)
    GET    /healthz, /readyz

Every path but the two probes needs `Authorization: Bearer <token>` (auth.py): 401 without a
valid one, 403 when a read-only token asks for more than GET or for either kind of token.

`{type}` is any name kubectl would accept: plural, singular, kind or short name.  Errors are
JSON `{"error": ..., "details": [...]}` with the HTTP status Kubernetes would use (404, 409,
413, 422).  `apply` is one store transaction (see apply.py): every document is validated
first, duplicates and stale resourceVersions refuse the whole request, and the writes are
committed together or not at all.  Each result carries `warnings`: what its object would
store but the mesh not enforce (a dry compilation on a worker thread, apply_checks.py;
`strict=true` refuses the apply instead).
Request bodies are bounded (`max_body_bytes`, 413).
"""

from __future__ import annotations

from typing import Any

import msgspec
from fastapi import FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tulle.controlplane.api import paging
from tulle.controlplane.api.api_token_routes import api_tokens_router
from tulle.controlplane.api.api_tokens import TokenStore
from tulle.controlplane.api.apply import apply_documents
from tulle.controlplane.api.apply import error as _error
from tulle.controlplane.api.apply_checks import ApplyChecks, mesh_checks
from tulle.controlplane.api.auth import Authenticate, BearerTokens
from tulle.controlplane.api.body import (
    BodyError,
    body_refused,
    check_documents,
    http_error,
    invalid_request,
    read_json,
)
from tulle.controlplane.api.bootstrap_tokens import add_token_routes
from tulle.controlplane.api.ca_routes import add_ca_routes
from tulle.controlplane.api.check_routes import add_check_routes
from tulle.controlplane.api.dashboard_routes import add_dashboard_routes
from tulle.controlplane.api.discovery_routes import add_discovery_routes
from tulle.controlplane.api.kinds import kind_info, stored_namespace
from tulle.controlplane.api.limits import DEFAULT_MAX_BODY_BYTES, BodyLimit
from tulle.controlplane.api.skew_routes import add_skew_routes, warn_older
from tulle.controlplane.api.stat_routes import add_stat_routes
from tulle.controlplane.api.tap_routes import add_tap_routes
from tulle.controlplane.api.watch_routes import Watches, WatchLimits
from tulle.controlplane.ca.keeper import CAKeeper
from tulle.controlplane.ca.tokens import TokenService
from tulle.controlplane.push.server import PushServer, SnapshotCache
from tulle.controlplane.reconcile import Reconciler
from tulle.controlplane.store.errors import ConflictError, NotFoundError
from tulle.controlplane.store.protocol import ResourceStore

APPLY_BODY_KEYS = frozenset({"documents", "sources"})


def create_app(store: ResourceStore, push: PushServer, cache: SnapshotCache,
               reconciler: Reconciler | None = None, *,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               api_tokens: TokenStore | None = None,
               bootstrap_tokens: TokenService | None = None,
               ca_keeper: CAKeeper | None = None,
               watch_limits: WatchLimits | None = None) -> FastAPI:
    """`api_tokens`: who may call the API (default: kept in `store`); there is no way to turn
    authentication off.  `bootstrap_tokens`: the CA's proxy tokens; without it (no CA) the
    `/api/v1/tokens` endpoints are absent.  `watch_limits`: the bounds of list watches
    (watch_routes.py; the defaults in production)."""
    api_tokens = api_tokens if api_tokens is not None else TokenStore(store)
    watches = Watches(store, api_tokens, watch_limits)
    app = FastAPI(title="Tulle control plane", version="v1",
                  description="Declare mesh intent; see proxies and what they run.")
    app.state.watches = watches  # (the control plane ends them before the server stops)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(BodyError, body_refused)
    app.add_exception_handler(StarletteHTTPException, http_error)
    if max_body_bytes:
        app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    # Added last, so outermost: nobody unauthenticated gets as far as the body limit.
    app.add_middleware(Authenticate, authenticators=[BearerTokens(api_tokens)])
    app.include_router(api_tokens_router(api_tokens))
    checks = (ApplyChecks(mesh_checks(reconciler.view, push.statuses))
              if reconciler is not None else None)
    app.state.apply_checks = checks  # (the control plane closes it when it stops)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=None)
    async def readyz() -> dict[str, str] | JSONResponse:
        if reconciler is not None and not reconciler.ready.is_set():
            return _error(503, "not ready: initial compilation pending")
        return {"status": "ready"}

    @app.get("/api/v1/resources/{type_}", response_model=None)
    async def list_resources(request: Request, response: Response, type_: str,
                             namespace: str | None = None,
                             labelSelector: str | None = None, watch: bool = False,
                             resourceVersion: str | None = None,
                             allowWatchBookmarks: bool = False, limit: int | None = None,
                             continue_: str | None = Query(None, alias="continue")) -> Any:
        info = kind_info(type_)
        if isinstance(info, JSONResponse):
            return info
        if watch:
            return await watches.respond(request, info, namespace, labelSelector,
                                         resourceVersion, allowWatchBookmarks)
        ns = namespace if info.namespaced else None
        selector = labelSelector or None
        metadata: dict[str, str] = {}
        try:
            if limit is None and continue_ is None:
                items, revision = await store.list(info.kind, ns, selector)
            else:
                size = paging.check_limit(limit if limit is not None else paging.MAX_LIMIT)
                after = (paging.decode(continue_, info.kind, ns, selector)
                         if continue_ else None)
                items, revision, last = await store.list_page(info.kind, ns, selector, after,
                                                              size)
                if last is not None:
                    metadata["continue"] = paging.encode(info.kind, ns, selector, last)
        except paging.PagingError as exc:
            return _error(400, str(exc))
        except ValueError as exc:
            return _error(400, f"invalid labelSelector: {exc}")
        warn_older(response, push)
        return {"apiVersion": info.api_version, "kind": f"{info.kind}List",
                "metadata": {"resourceVersion": str(revision), **metadata}, "items": items}

    @app.get("/api/v1/resources/{type_}/{name}", response_model=None)
    async def get_resource(response: Response, type_: str, name: str,
                           namespace: str | None = None) -> Any:
        info = kind_info(type_)
        if isinstance(info, JSONResponse):
            return info
        try:
            obj = await store.get(info.kind, stored_namespace(info, namespace), name)
        except NotFoundError as exc:
            return _error(404, str(exc))
        warn_older(response, push)
        return obj

    @app.delete("/api/v1/resources/{type_}/{name}", response_model=None)
    async def delete_resource(type_: str, name: str, namespace: str | None = None,
                              resourceVersion: str | None = None) -> Any:
        info = kind_info(type_)
        if isinstance(info, JSONResponse):
            return info
        try:
            return await store.delete(info.kind, stored_namespace(info, namespace), name, resourceVersion)
        except NotFoundError as exc:
            return _error(404, str(exc))
        except ConflictError as exc:
            return _error(409, str(exc))

    @app.post("/api/v1/apply", response_model=None)
    async def apply(request: Request,
                    dry_run: bool = Query(False, alias="dryRun"),
                    strict: bool = Query(False)) -> Any:
        try:
            body = await read_json(request)
        except BodyError as exc:
            return exc.response()
        docs = body.get("documents") if isinstance(body, dict) else None
        if not isinstance(docs, list):
            return _error(400, "body must be {\"documents\": [...]}")
        if unknown := sorted(set(body) - APPLY_BODY_KEYS):
            # `dryRun` is a query parameter: in the body it would have been ignored and the
            # apply done for real ("nothing accepted silently").
            return _error(400, f"unknown field in the apply body: {', '.join(unknown)} "
                               "(the body holds documents and sources; dryRun and strict are "
                               "query parameters)",
                          [{"path": key, "message": "unknown field"} for key in unknown])
        try:
            check_documents(docs)
        except BodyError as exc:
            return exc.response()
        sources = body.get("sources")
        return await apply_documents(store, docs, sources if isinstance(sources, list) else [],
                                     dry_run, strict=strict, checks=checks)

    def proxy_rows(namespace: str | None = None, after: tuple[str, str] | None = None,
                   limit: int | None = None) -> list[dict[str, Any]]:
        """The proxies' rows by (namespace, name): those of `namespace` when given, after the
        key `after`, at most `limit` (ADR 0120: a row is built only for what is answered)."""
        items = []
        known = {(s.namespace, s.name): s for s in push.statuses()}
        keys = sorted(k for k in set(known) | set(cache.proxies())
                      if (namespace is None or k[0] == namespace)
                      and (after is None or k > after))
        for ns, name in keys[:limit]:
            st = known.get((ns, name))
            cfg = cache.get((ns, name))
            row: dict[str, Any] = st.to_dict() if st else {
                "namespace": ns, "name": name, "connected": False}
            row["desiredVersion"] = cfg.version if cfg else None
            if reconciler is not None and (ns, name) in reconciler.errors:
                row["configError"] = reconciler.errors[(ns, name)]
            items.append(row)
        return items

    @app.get("/api/v1/proxies", response_model=None)
    async def proxies(namespace: str | None = None, limit: int | None = None,
                      continue_: str | None = Query(None, alias="continue")) -> Any:
        if limit is None and continue_ is None:
            return {"items": proxy_rows(namespace), "stream": push.counters()}
        try:
            size = paging.check_limit(limit if limit is not None else paging.MAX_LIMIT)
            after = (paging.decode(continue_, "proxies", namespace, None)
                     if continue_ else None)
        except paging.PagingError as exc:
            return _error(400, str(exc))
        rows = proxy_rows(namespace, (after[1], after[2]) if after else None, size + 1)
        answer: dict[str, Any] = {"items": rows[:size], "stream": push.counters()}
        if len(rows) > size:
            last = rows[size - 1]
            answer["metadata"] = {"continue": paging.encode(
                "proxies", namespace, None, ("proxies", last["namespace"], last["name"]))}
        return answer

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

    if bootstrap_tokens is not None:
        add_token_routes(app, store, bootstrap_tokens,
                         *([reconciler.trust_domain] if reconciler is not None else []))
    if ca_keeper is not None:
        add_ca_routes(app, ca_keeper, push)
    if push.stats is not None:
        add_stat_routes(app, push.stats, cache.get)
    add_check_routes(app, store, push, proxy_rows, ca_keeper)
    add_skew_routes(app, store, checks)
    add_discovery_routes(app, type(store).__name__.removesuffix("Store").lower())
    if push.taps is not None:
        add_tap_routes(app, push.taps, store, tokens=api_tokens)
    add_dashboard_routes(app, store, cache, push.stats)
    return app

