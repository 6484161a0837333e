"""API tokens: who may call the REST API, and with which role.  Kept hashed in the store.

A token is `tulle_<id>_<secret>`: `id` (16 hex digits) names the record and is not secret;
`secret` is 32 random bytes (urlsafe base64).  The store keeps only SHA-256 of the secret, so a
token cannot be read back from the store, a backup or the API: it is shown once, when created.
A fast hash is enough here because the secret is 256 random bits, not a password (no
dictionary to walk); verification looks the record up by id and compares digests with
`hmac.compare_digest`, so the time taken says nothing about how much of a guess was right.

Records live in the `ResourceStore` as the internal kind `APIToken` (cluster-scoped, named by
the id), so every control-plane replica on one PostgreSQL store honours the same tokens and a
revocation takes effect on all of them at the next request.  The kind is not in the resource
registry: `tulle apply`, `get` and `delete` cannot reach it; only `/api/v1/api-tokens` (admin) can.

These are the API's own tokens; the proxies' bootstrap tokens (signed, naming an identity) are
the CA's business (`controlplane/ca/`, endpoints in `bootstrap_tokens.py`) and share nothing
with this module.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from tulle.controlplane.store.errors import AlreadyExistsError, NotFoundError
from tulle.controlplane.store.protocol import ResourceStore

TOKEN_KIND = "APIToken"
TOKEN_API_VERSION = "internal.tulle.dev/v1"
_PREFIX = "tulle_"
_TOKEN_RE = re.compile(r"^tulle_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")
MAX_NAME = 63


class Role(StrEnum):
    """What a token may do.  `read-only`: GET (and HEAD) outside token management
    (`/api/v1/api-tokens`, `/api/v1/tokens`); `admin`: everything, token management included."""

    READ_ONLY = "read-only"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is from, once authenticated.  `subject` names the credential for logs and
    audit (`token:<id>`; a client certificate would give its SPIFFE ID) and is never secret."""

    subject: str
    role: Role


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A token as listed: everything but the secret and its hash."""

    id: str
    name: str
    role: Role
    created: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name, "role": self.role.value,
                "created": self.created}


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """(id, secret) of a well-formed token; None for anything else (never an exception that
    could carry the input into a message)."""
    m = _TOKEN_RE.match(token)
    return (m.group(1), m.group(2)) if m else None


def token_id(token: str) -> str | None:
    """The non-secret id of a well-formed token (for `tulle api-token revoke TOKEN`)."""
    parsed = parse_token(token)
    return parsed[0] if parsed else None


class TokenStore:
    """Create, verify, list and revoke API tokens over a `ResourceStore`."""

    def __init__(self, store: ResourceStore) -> None:
        self.store = store

    async def create(self, role: Role, name: str = "") -> tuple[str, TokenInfo]:
        """A new token (returned once, the only time it exists outside its holder) and its
        record.  `name` is a label for people (`ci`, `alice`), not unique."""
        if len(name) > MAX_NAME or not all(c.isalnum() or c in "-_.@ " for c in name):
            raise ValueError(f"name: at most {MAX_NAME} letters, digits, '-', '_', '.', '@' "
                             "or spaces")
        for _ in range(3):  # 64-bit ids: a collision is astronomically rare, never silent
            tid = secrets.token_hex(8)
            secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
            created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            obj = {"apiVersion": TOKEN_API_VERSION, "kind": TOKEN_KIND,
                   "metadata": {"name": tid},
                   "spec": {"role": role.value, "name": name, "created": created,
                            "sha256": _digest(secret)}}
            try:
                await self.store.create(obj)
            except AlreadyExistsError:
                continue
            return f"{_PREFIX}{tid}_{secret}", TokenInfo(tid, name, role, created)
        raise RuntimeError("could not allocate a token id")

    async def verify(self, token: str) -> Principal | None:
        """The token's principal, or None if it is malformed, unknown, revoked or wrong."""
        parsed = parse_token(token)
        if parsed is None:
            return None
        tid, secret = parsed
        try:
            obj = await self.store.get(TOKEN_KIND, None, tid)
        except NotFoundError:
            # Hash anyway so an unknown id costs what a known one does.
            hmac.compare_digest(_digest(secret), "0" * 64)
            return None
        spec: dict[str, Any] = obj.get("spec") or {}
        stored = spec.get("sha256")
        if not isinstance(stored, str) or not hmac.compare_digest(_digest(secret), stored):
            return None
        try:
            role = Role(str(spec.get("role")))
        except ValueError:
            return None
        return Principal(subject=f"token:{tid}", role=role)

    async def still_valid(self, principal: Principal) -> bool:
        """Whether the token `principal` was authenticated by still exists: what a long
        request (a tap) asks again while it runs, so a revocation ends it (ADR 0102).  A
        principal of another kind (not `token:<id>`) is not this store's to judge: True."""
        kind, _, tid = principal.subject.partition(":")
        if kind != "token":
            return True
        try:
            await self.store.get(TOKEN_KIND, None, tid)
        except NotFoundError:
            return False
        return True

    async def list(self) -> list[TokenInfo]:
        items, _ = await self.store.list(TOKEN_KIND)
        return [_info(o) for o in items]

    async def revoke(self, tid: str) -> TokenInfo:
        """Delete the token's record; `NotFoundError` if there is none."""
        if not re.fullmatch(r"[0-9a-f]{16}", tid):
            raise NotFoundError("no such token id (ids are 16 hex digits)")
        return _info(await self.store.delete(TOKEN_KIND, None, tid))


def _info(obj: dict[str, Any]) -> TokenInfo:
    spec = obj.get("spec") or {}
    return TokenInfo(id=str(obj["metadata"]["name"]), name=str(spec.get("name") or ""),
                     role=Role(str(spec.get("role"))), created=str(spec.get("created") or ""))
