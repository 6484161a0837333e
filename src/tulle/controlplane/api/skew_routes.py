"""What an older proxy leaves out, shown where a stored object is read: `describe` names what
this object puts in use at connected proxies of an older build, and every read of resources
says when any such proxy leaves out config in use.

Why (ADR 0131): "nothing accepted silently" asks that `apply` warn, and that `get` and
`describe` show, whatever is stored but not enforced.  Apply warns of what it puts in use at
older proxies (ADR 0125); afterwards only `get proxies` and `tulle check` said so, per proxy.
An operator looking at the sticky route itself saw `Accepted` and nothing else, while three
sidecars of an older build routed without stickiness.

- `GET /api/v1/resources/{type}/{name}/skew` answers `{"olderProxies": N, "warnings":
  [...]}`: the connected proxies lacking a feature a config can use, and a line per feature
  the object puts in use at some of them (`skew_warnings.stored_skew`: their snapshots from
  the state with the object and with it deleted).  It runs on apply's worker thread, in
  apply's turn (`apply_checks.py`): two renders of those proxies' snapshots, nothing on the
  event loop; with no older proxy connected, nothing is rendered.
- A read of resources (list or one object) carries an HTTP `Warning: 299` header (RFC 7234
  §5.5, as the Kubernetes API warns) while some connected proxy leaves out config its
  snapshot uses (`ProxyStatus.withheld_in_use`, worked out once per ACKed snapshot): which
  objects, `describe` says; which proxies, `get proxies`.  The CLI prints such headers as
  `Warning:` lines on stderr.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse

from tulle.controlplane.api.apply import error as _error
from tulle.controlplane.api.apply_checks import ApplyChecks, Checks
from tulle.controlplane.api.kinds import kind_info, stored_namespace
from tulle.controlplane.push.server import PushServer
from tulle.controlplane.store.errors import NotFoundError
from tulle.controlplane.store.protocol import ResourceStore


def older_in_use_warning(push: PushServer) -> str | None:
    """The `Warning` header's value while a connected proxy leaves out config in use."""
    n = sum(1 for st in push.status.values() if st.connected and st.withheld_in_use())
    if not n:
        return None
    who = f"{n} connected prox{'y' if n == 1 else 'ies'} of an older build"
    return (f'299 - "{who} leave{"s" if n == 1 else ""} out config in use: `tulle get '
            'proxies` names them, `tulle describe KIND NAME` what an object puts in use '
            'there"')


def warn_older(response: Response, push: PushServer) -> None:
    """Adds `older_in_use_warning`'s header to a read's answer, when there is one."""
    value = older_in_use_warning(push)
    if value is not None:
        response.headers.append("Warning", value)


def add_skew_routes(app: FastAPI, store: ResourceStore, checks: ApplyChecks | None) -> None:
    @app.get("/api/v1/resources/{type_}/{name}/skew", response_model=None)
    async def skew(type_: str, name: str, namespace: str | None = None) -> Any:
        info = kind_info(type_)
        if isinstance(info, JSONResponse):
            return info
        ns = stored_namespace(info, namespace)
        try:
            await store.get(info.kind, ns, name)
        except NotFoundError as exc:
            return _error(404, str(exc))
        if checks is None:
            return {"olderProxies": 0, "warnings": []}
        key = (info.kind, ns or "", name)

        def work(c: Checks) -> tuple[int, list[str]]:
            return c.stored(key) if c.stored is not None else (0, [])
        older, lines = await checks.run(work)
        return {"olderProxies": older, "warnings": lines}


__all__ = ["add_skew_routes", "older_in_use_warning", "warn_older"]

