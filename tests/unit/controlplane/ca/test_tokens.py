"""Bootstrap tokens: signed, expiring, revocable, single-use across replicas of one store."""

from __future__ import annotations

import datetime as dt

import pytest

from tulle.controlplane.ca.tokens import TokenError, TokenService, TokenSigner
from tulle.controlplane.store.memory import MemoryStore

KEY = b"k" * 32


async def _service() -> TokenService:
    return TokenService(MemoryStore(), TokenSigner(KEY))


async def test_issue_verify_consume_then_replay_refused() -> None:
    svc = await _service()
    token, claims = await svc.issue("shop", "web-0", "web", labels={"app": "web"})
    got = await svc.verify(token)
    assert (got.namespace, got.workload, got.service_account, got.labels) == (
        "shop", "web-0", "web", {"app": "web"})
    await svc.consume(got)
    with pytest.raises(TokenError, match="already used") as err:
        await svc.verify(token)
    assert token not in str(err.value)
    with pytest.raises(TokenError, match="already used"):
        await svc.consume(claims)  # a racing second use loses at the store


async def test_replica_sharing_the_store_sees_the_use() -> None:
    a = await _service()
    b = TokenService(a.store, TokenSigner(KEY))
    token, claims = await a.issue("shop", "web-0", "web")
    await a.consume(await a.verify(token))
    with pytest.raises(TokenError, match="already used"):
        await b.verify(token)


async def test_expired_refused() -> None:
    svc = await _service()
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    token, _ = await svc.issue("shop", "web-0", "web", now=past)
    with pytest.raises(TokenError, match="expired"):
        await svc.verify(token)


async def test_revoked_refused() -> None:
    svc = await _service()
    token, claims = await svc.issue("shop", "web-0", "web")
    await svc.revoke("shop", claims.id)
    with pytest.raises(TokenError, match="revoked"):
        await svc.verify(token)


async def test_forged_or_tampered_refused() -> None:
    svc = await _service()
    token, _ = await svc.issue("shop", "web-0", "web")
    other = TokenSigner(b"o" * 32)
    forged = other.sign(svc.signer.open(token))
    with pytest.raises(TokenError, match="bad signature"):
        await svc.verify(forged)
    head, body, mac = token.split(".")
    with pytest.raises(TokenError):
        await svc.verify(f"{head}.{body}x.{mac}")
    for junk in ("", "tbt1", "tbt1.a.b.c", "x" * 10_000):
        with pytest.raises(TokenError, match="malformed|signature"):
            await svc.verify(junk)


def test_signer_repr_hides_key() -> None:
    assert "k" * 8 not in repr(TokenSigner(KEY))
