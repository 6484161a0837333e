"""Bootstrap tokens: signed, expiring, revocable, single-use across replicas of one store."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from tests.support.postgres import fresh_schema, postgres_server  # noqa: F401  (fixture)

from tulle.controlplane.ca.tokens import (
    TOKEN_KIND,
    USE_KIND,
    TokenError,
    TokenService,
    TokenSigner,
)
from tulle.controlplane.store import ResourceStore, open_store
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


PIN = "sha256:" + "ab" * 32


async def test_a_token_carries_the_ca_pins_the_proxy_reads_and_the_mac_covers_them() -> None:
    from tulle.proxyconfig.stream_trust import token_pins

    svc = TokenService(MemoryStore(), TokenSigner(KEY), ca_pins=lambda: [PIN])
    token, claims = await svc.issue("shop", "web-0", "web")
    assert token.startswith("tbt2.") and claims.ca == (PIN,)
    assert token_pins(token) == [PIN]  # what the proxy reads, without the key
    assert (await svc.verify(token)).ca == (PIN,)
    # Another pin in the claims (a MITM handing out doctored tokens) breaks the MAC.
    import base64
    import json

    prefix, body, mac = token.split(".")
    raw = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw["ca"] = ["sha256:" + "cd" * 32]
    forged = base64.urlsafe_b64encode(json.dumps(raw).encode()).rstrip(b"=").decode()
    with pytest.raises(TokenError, match="bad signature"):
        await svc.verify(f"{prefix}.{forged}.{mac}")


async def test_a_tbt1_token_from_before_tls_still_verifies_and_carries_no_pin() -> None:
    from tulle.proxyconfig.stream_trust import token_pins

    svc = await _service()  # no pins: signs the tbt1 form
    token, _ = await svc.issue("shop", "web-0", "web")
    assert token.startswith("tbt1.")
    assert token_pins(token) == []
    assert (await svc.verify(token)).ca == ()
    # A tbt1 token relabelled tbt2 does not verify (the prefix is under the MAC).
    with pytest.raises(TokenError):
        await svc.verify("tbt2." + token.split(".", 1)[1])


async def test_purge_deletes_only_expired_records_and_an_expired_token_stays_refused() -> None:
    svc = await _service()
    now = dt.datetime.now(dt.UTC)
    past = now - dt.timedelta(hours=2)
    old_used, old_claims = await svc.issue("shop", "web-0", "web", now=past)
    await svc.consume(old_claims)  # used, then expired: a token record and a use record
    await svc.issue("shop", "web-1", "web", now=past)  # never used, expired
    live_used, live_claims = await svc.issue("shop", "web-2", "web")
    await svc.consume(await svc.verify(live_used))
    live, _ = await svc.issue("shop", "web-3", "web")

    assert await svc.purge(now) == 3
    assert await svc.purge(now) == 0  # nothing left to do; a second replica finds nothing
    kinds = [o["kind"] for o in (await svc.store.list())[0]]
    assert sorted(kinds) == sorted([TOKEN_KIND, TOKEN_KIND, USE_KIND])
    with pytest.raises(TokenError, match="expired"):  # still refused by its own claims
        await svc.verify(old_used)
    with pytest.raises(TokenError, match="already used"):  # live records untouched
        await svc.verify(live_used)
    assert (await svc.verify(live)).workload == "web-3"


Opener = Callable[[], Awaitable[ResourceStore]]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def open_backend(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Opener]:
    """Opens stores on one backend's data, each its own connection (as replicas are)."""
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "memory":
            shared = MemoryStore()

            async def memory() -> ResourceStore:
                return shared

            yield memory
            return
        if request.param == "sqlite":
            url = f"sqlite:{tmp_path}/store.db"
        else:
            url = await stack.enter_async_context(
                fresh_schema(request.getfixturevalue("postgres_server")))

        async def opener() -> ResourceStore:
            store = await open_store(url)
            stack.push_async_callback(store.close)
            return store

        yield opener


async def test_two_replicas_consuming_one_token_at_once_admit_one(open_backend: Opener) -> None:
    """The single-use check is atomic in the store: racing uses from two store connections
    (two replicas), many rounds, exactly one wins each time."""
    a = TokenService(await open_backend(), TokenSigner(KEY))
    b = TokenService(await open_backend(), TokenSigner(KEY))
    for _ in range(10):
        token, _ = await a.issue("shop", "web-0", "web")
        claims = [await a.verify(token), await b.verify(token)]  # both checked first
        got = await asyncio.gather(*(svc.consume(c) for svc, c in zip(
            (a, b, a, b), claims * 2, strict=True)), return_exceptions=True)
        assert sum(r is None for r in got) == 1, got
        assert all(r is None or isinstance(r, TokenError) and "already used" in str(r)
                   for r in got)


async def test_consume_is_all_or_none_and_release_gives_the_tokens_back(
        open_backend: Opener) -> None:
    """A node's hello spends its tokens together: one already used spends none of the
    others; a hello refused after its consume releases them, and they work again."""
    svc = TokenService(await open_backend(), TokenSigner(KEY))
    t1, c1 = await svc.issue("shop", "web-0", "web")
    t2, c2 = await svc.issue("shop", "api-0", "api")
    await svc.consume(c2)
    with pytest.raises(TokenError, match=f"{c2.id} already used"):
        await svc.consume(c1, c2)
    assert await svc.verify(t1) == c1  # not burnt by the refused pair
    await svc.release(c2)
    await svc.consume(c1, c2)
    for t in (t1, t2):
        with pytest.raises(TokenError, match="already used"):
            await svc.verify(t)
    await svc.release(c1, c2)
    await svc.release(c1)  # twice: nothing left to release, no error
    assert [await svc.verify(t) for t in (t1, t2)] == [c1, c2]
