"""Who may call the REST API: authentication and roles, as ASGI middleware in front of it all.

Every request except the health probes (`/healthz`, `/readyz`) must carry a credential that an
`Authenticator` accepts; it runs before routing, so unknown paths, `/openapi.json` and `/docs`
are closed too, and before the body is read.  The answer is:

* 401 with `WWW-Authenticate: Bearer` when no credential is sent or it is not accepted (a bad,
  unknown or revoked token look the same from outside);
* 403 when the credential's role does not allow the request: `read-only` may GET (and HEAD)
  anything but token management (`/api/v1/api-tokens`, and the proxies' bootstrap tokens under
  `/api/v1/tokens`); `admin` may do everything.

No message carries what the caller sent, and nothing is logged of it but the subject of an
accepted credential (`token:<id>`), so a token pasted in the wrong place does not end up in a
log.  Authenticators are a list tried in order: today bearer tokens (`api_tokens.py`); a client
certificate from the mesh CA would be one more (`Authenticator` reading the TLS peer of the
connection), without changing the role rules here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Protocol

from tulle.controlplane.api.api_tokens import Principal, Role, TokenStore
from tulle.controlplane.api.limits import ASGIApp, Receive, Scope, Send
from tulle.controlplane.push.reported import shown
from tulle.dashboard import ASSETS

log = logging.getLogger("tulle.controlplane.api.auth")

OPEN_PATHS = frozenset({"/healthz", "/readyz"}) | frozenset(
    {"/dashboard", "/dashboard/"} | {f"/dashboard/{name}" for name in ASSETS})
"""Answered without a credential: liveness and readiness probes say nothing of the mesh, nor
do the dashboard's static files (a fixed list; the page's data calls carry the token,
ADR 0056)."""

READ_METHODS = frozenset({"GET", "HEAD"})
ADMIN_ONLY_PREFIXES = ("/api/v1/api-tokens", "/api/v1/tokens")
"""Token management (API tokens, proxies' bootstrap tokens) is admin-only, listing included."""

MAX_AUTHORIZATION_BYTES = 1024
"""A longer `Authorization` header is not looked at (tokens are 76 bytes)."""


class Authenticator(Protocol):
    """One way of proving who the caller is.  Returns None when the request carries no
    credential of this kind (the next authenticator is tried), raises `Rejected` when it carries
    one that is not valid."""

    async def authenticate(self, scope: Scope) -> Principal | None: ...


class Rejected(Exception):
    """A credential was presented and is not valid.  The message is for the caller and must not
    contain the credential."""


class BearerTokens:
    """`Authorization: Bearer <token>` checked against the `TokenStore`."""

    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens

    async def authenticate(self, scope: Scope) -> Principal | None:
        values = [v for k, v in scope.get("headers") or () if k == b"authorization"]
        if not values:
            return None
        if len(values) > 1:
            raise Rejected("more than one Authorization header")
        raw = values[0]
        if len(raw) > MAX_AUTHORIZATION_BYTES:
            raise Rejected("invalid or revoked token")
        scheme, _, credential = raw.decode("latin-1").strip().partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise Rejected("unsupported Authorization scheme: use 'Authorization: Bearer <token>'")
        principal = await self.tokens.verify(credential.strip())
        if principal is None:
            raise Rejected("invalid or revoked token")
        return principal


def allowed(role: Role, method: str, path: str) -> bool:
    """The role rule: admin does everything; read-only reads everything but tokens."""
    if role is Role.ADMIN:
        return True
    return method in READ_METHODS and not any(
        path == prefix or path.startswith(prefix + "/") for prefix in ADMIN_ONLY_PREFIXES)


class Authenticate:
    """ASGI middleware: authenticate, check the role, then pass the request on with
    `scope["tulle.principal"]` set."""

    def __init__(self, app: ASGIApp, authenticators: Sequence[Authenticator]) -> None:
        self.app = app
        self.authenticators = tuple(authenticators)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        principal: Principal | None = None
        try:
            for authn in self.authenticators:
                principal = await authn.authenticate(scope)
                if principal is not None:
                    break
        except Rejected as exc:
            _client_log("rejected", scope, str(exc))
            await _answer(send, 401, f"unauthorized: {exc}", challenge=True)
            return
        if principal is None:
            await _answer(send, 401, "unauthorized: this API needs a token: send "
                                     "'Authorization: Bearer <token>' (tulle: --token, "
                                     "TULLE_TOKEN or a token file)", challenge=True)
            return
        method, path = scope.get("method", ""), scope.get("path", "")
        if not allowed(principal.role, method, path):
            _client_log(f"forbidden for {principal.subject} ({principal.role.value})", scope,
                        f"{method} {path}")
            await _answer(send, 403, f"forbidden: a {principal.role.value} token cannot "
                                     f"{method} {path}; this needs an admin token")
            return
        scope["tulle.principal"] = principal
        await self.app(scope, receive, send)


def _client_log(what: str, scope: Scope, detail: str) -> None:
    # `detail` holds the caller's path, percent-decoded by the server: `%0A` would start a
    # forged log line, a 16 KB path would be logged whole (attack review A2, ADR 0060).
    client = scope.get("client") or ("?", 0)
    log.info("API request %s from %s: %s", what, client[0], shown(detail))


async def _answer(send: Send, status: int, message: str, *, challenge: bool = False) -> None:
    body = json.dumps({"error": message, "details": []}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if challenge:
        headers.append((b"www-authenticate", b'Bearer realm="tulle"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
