"""Bootstrap tokens: what a proxy presents once to get its first certificate.

A token is `tbt2.<claims>.<mac>`: base64url JSON claims (id, namespace, workload, service
account, labels, expiry, and the pins of the CA roots, `ca`, which a proxy reads to verify the
control plane on first contact: ADR 0034) and an HMAC-SHA256 over them with a secret derived from the CA key
(`CertificateAuthority.derive_secret`), so every replica verifies it without a second secret.
It names exactly one workload identity and can claim nothing else.

The store keeps a record per issued token (`InternalBootstrapToken`, id and claims, never the
token itself, which is shown once, to the operator who issued it).  Revoking deletes that
record; using it creates an `InternalTokenUse` record with the same name, whose create is
the single-use check: a second use (a replay, on this replica or another) finds it and is
refused.  Admission creates it before the hello's last checks (its registration) and deletes
it again (`release`) if they refuse the hello, so a token is spent only by an admitted
hello.  Both kinds are internal: not in the API registry, ignored by the compiler.

`tbt1` tokens (no pin, issued before the stream moved to TLS) still verify here; a proxy
takes one only together with an explicit `--ca-file` (`proxyconfig/stream_trust.py`).

Refusals say *why* (expired, revoked, already used, bad signature) and name the token's id at
most, never its text.  Z2 may reuse `TokenSigner` for API tokens with its own purpose string.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tulle.controlplane.store.errors import (
    AlreadyExistsError,
    BatchError,
    NotFoundError,
    StoreError,
)
from tulle.controlplane.store.protocol import BatchOp, ResourceStore
from tulle.proxyconfig.stream_trust import TOKEN_PREFIX_PINNED, TOKEN_PREFIX_UNPINNED

PREFIX = TOKEN_PREFIX_PINNED
PREFIXES = (TOKEN_PREFIX_PINNED, TOKEN_PREFIX_UNPINNED)
TOKEN_KIND = "InternalBootstrapToken"
USE_KIND = "InternalTokenUse"
INTERNAL_GROUP = "internal.tulle.dev/v1"
PURPOSE = b"tulle bootstrap tokens v1"
DEFAULT_TTL = dt.timedelta(hours=1)
MAX_TTL = dt.timedelta(days=30)
MAX_TOKEN_BYTES = 4096

log = logging.getLogger("tulle.controlplane.ca")


class TokenError(Exception):
    """A token that is refused; the message is safe to log and send (no token text)."""


@dataclass(frozen=True, slots=True)
class Claims:
    id: str
    namespace: str
    workload: str
    service_account: str
    expires: int
    """Unix seconds."""
    labels: dict[str, str] = field(default_factory=dict)
    ca: tuple[str, ...] = ()
    """Pins (`sha256:<hex>` of the SPKI) of the CA roots the proxy may trust on first contact;
    empty only in a `tbt1` token."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "ns": self.namespace, "wl": self.workload,
                               "sa": self.service_account, "exp": self.expires,
                               "labels": self.labels}
        if self.ca:
            out["ca"] = list(self.ca)
        return out


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TokenSigner:
    """HMAC signing and checking of claims; no storage (pure, unit-testable)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("a token key has at least 32 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "TokenSigner(<redacted>)"

    def sign(self, claims: Claims) -> str:
        body = _b64(json.dumps(claims.to_json(), sort_keys=True,
                               separators=(",", ":")).encode())
        prefix = PREFIX if claims.ca else TOKEN_PREFIX_UNPINNED
        mac = hmac.new(self._key, f"{prefix}.{body}".encode(), hashlib.sha256).digest()
        return f"{prefix}.{body}.{_b64(mac)}"

    def open(self, token: str, now: dt.datetime | None = None) -> Claims:
        """The claims of an authentic, unexpired token; TokenError otherwise."""
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenError("bootstrap token malformed: too long")
        parts = token.split(".")
        if len(parts) != 3 or parts[0] not in PREFIXES:
            raise TokenError("bootstrap token malformed")
        try:
            mac = _unb64(parts[2])
        except (binascii.Error, ValueError):
            raise TokenError("bootstrap token malformed") from None
        want = hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode(),
                        hashlib.sha256).digest()
        if not hmac.compare_digest(mac, want):
            raise TokenError("bootstrap token refused: bad signature (not issued by this "
                             "mesh's CA)")
        try:
            raw = json.loads(_unb64(parts[1]))
            claims = Claims(id=str(raw["id"]), namespace=str(raw["ns"]),
                            workload=str(raw["wl"]), service_account=str(raw["sa"]),
                            expires=int(raw["exp"]),
                            labels={str(k): str(v) for k, v in (raw.get("labels") or {}).items()},
                            ca=tuple(str(p) for p in (raw.get("ca") or ())))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise TokenError("bootstrap token malformed") from None
        if (now or _now()).timestamp() >= claims.expires:
            raise TokenError(f"bootstrap token {claims.id} expired")
        return claims


class TokenService:
    """Issue, revoke and consume tokens against the store (shared by replicas)."""

    def __init__(self, store: ResourceStore, signer: TokenSigner,
                 ca_pins: Callable[[], Sequence[str]] = tuple) -> None:
        """`ca_pins`: the pins put into each token issued (read at each issue, so a rotated
        root reaches the next token)."""
        self.store = store
        self.signer = signer
        self.ca_pins = ca_pins

    async def issue(self, namespace: str, workload: str, service_account: str, *,
                    labels: dict[str, str] | None = None, ttl: dt.timedelta = DEFAULT_TTL,
                    now: dt.datetime | None = None) -> tuple[str, Claims]:
        if not dt.timedelta(seconds=1) <= ttl <= MAX_TTL:
            raise ValueError(f"ttl: must be between 1s and {MAX_TTL.days}d")
        now = now or _now()
        claims = Claims(id=secrets.token_hex(8), namespace=namespace, workload=workload,
                        service_account=service_account,
                        expires=int((now + ttl).timestamp()), labels=dict(labels or {}),
                        ca=tuple(self.ca_pins()))
        await self.store.create({
            "apiVersion": INTERNAL_GROUP, "kind": TOKEN_KIND,
            "metadata": {"name": claims.id, "namespace": namespace},
            "spec": {"workload": workload, "serviceAccount": service_account,
                     "labels": claims.labels, "expires": claims.expires}})
        return self.signer.sign(claims), claims

    async def revoke(self, namespace: str, token_id: str) -> None:
        """NotFoundError when no such token is outstanding."""
        await self.store.delete(TOKEN_KIND, namespace, token_id)

    async def verify(self, token: str, now: dt.datetime | None = None) -> Claims:
        """Authentic, unexpired, not revoked, not used yet; TokenError otherwise."""
        claims = self.signer.open(token, now)
        try:
            await self.store.get(TOKEN_KIND, claims.namespace, claims.id)
        except NotFoundError:
            raise TokenError(f"bootstrap token {claims.id} revoked") from None
        try:
            await self.store.get(USE_KIND, claims.namespace, claims.id)
        except NotFoundError:
            return claims
        raise TokenError(f"bootstrap token {claims.id} already used (single-use)")

    async def purge(self, now: dt.datetime | None = None) -> int:
        """Delete the records of tokens past their expiry (outstanding or used): an expired
        token is refused by its own claims before the store is asked, so its records only
        grow the store.  Returns how many were deleted; a record another replica deleted
        first is skipped."""
        cutoff = (now or _now()).timestamp()
        gone = 0
        for kind in (TOKEN_KIND, USE_KIND):
            items, _ = await self.store.list(kind)
            for obj in items:
                if int((obj.get("spec") or {}).get("expires", 0)) > cutoff:
                    continue
                md = obj["metadata"]
                with contextlib.suppress(NotFoundError):
                    await self.store.delete(kind, md.get("namespace"), md["name"])
                    gone += 1
        return gone

    async def consume(self, *claims: Claims) -> None:
        """Mark the tokens used, all in one store write (all or none); TokenError naming the
        first that someone used first (a replay, or a hello racing this one).

        The check and the use are one atomic step: the create of the use record, which the
        store refuses when the key exists inside the write's own transaction (SQLite: under
        `BEGIN IMMEDIATE` and the store's lock; PostgreSQL: after the revision row's lock,
        which serialises writers, reading the committed row).  Of two hellos racing with one
        token, on one replica or two, exactly one creates it."""
        if not claims:
            return
        try:
            await self.store.batch([BatchOp("create", {
                "apiVersion": INTERNAL_GROUP, "kind": USE_KIND,
                "metadata": {"name": c.id, "namespace": c.namespace},
                "spec": {"expires": c.expires}}) for c in claims])
        except BatchError as exc:
            if isinstance(exc.error, AlreadyExistsError):
                raise TokenError(f"bootstrap token {claims[exc.index].id} already used "
                                 f"(single-use)") from None
            raise

    async def release(self, *claims: Claims) -> None:
        """Undo `consume` for a hello refused after it (its registration, or a CSR the CA
        would not sign): no proxy was admitted with these tokens, so they may be used again.
        Only the caller whose `consume` succeeded may release: while its use record exists
        no one else can create it, so the record deleted is its own.  A record that cannot be
        deleted (the store failing) leaves the token spent, which is safe."""
        for c in claims:
            try:
                await self.store.delete(USE_KIND, c.namespace, c.id)
            except NotFoundError:
                continue  # purged meanwhile (it expired): refused by its claims anyway
            except StoreError as exc:
                log.warning("bootstrap token %s: cannot release it after a refused hello "
                            "(%s); it stays spent", c.id, exc)
