"""API tokens: minted with a role, kept only as a hash, verified in constant time, revocable;
the bootstrap admin token file is 0600 and survives restarts only while it is valid."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tulle.cli import credentials
from tulle.controlplane.api import admin_token, api_tokens
from tulle.controlplane.api.admin_token import default_admin_token_file, ensure_admin_token
from tulle.controlplane.api.api_tokens import TOKEN_KIND, Role, TokenStore, parse_token
from tulle.controlplane.store.errors import NotFoundError
from tulle.controlplane.store.memory import MemoryStore


async def test_a_token_verifies_with_its_role_and_the_store_holds_only_its_hash() -> None:
    store = MemoryStore()
    ts = TokenStore(store)
    token, info = await ts.create(Role.READ_ONLY, "ci")
    assert parse_token(token) is not None and info.id in token
    principal = await ts.verify(token)
    assert principal is not None
    assert principal.role is Role.READ_ONLY and principal.subject == f"token:{info.id}"
    secret = token.split("_", 2)[2]
    stored = json.dumps(await store.list(TOKEN_KIND))
    assert secret not in stored and token not in stored
    assert "sha256" in stored
    assert [t.to_dict() for t in await ts.list()] == [info.to_dict()]
    assert "token" not in info.to_dict() and "sha256" not in info.to_dict()


@pytest.mark.parametrize("mangle", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # one character of the secret off
    lambda t: t.replace("tulle_", "tulle-"),            # not the shape
    lambda t: "",
    lambda t: t + "x",
    lambda t: "tulle_" + "0" * 16 + "_" + t.split("_", 2)[2],  # an id that does not exist
])
async def test_anything_but_the_token_itself_is_refused(mangle: object) -> None:
    ts = TokenStore(MemoryStore())
    token, _ = await ts.create(Role.ADMIN)
    assert callable(mangle)
    assert await ts.verify(mangle(token)) is None


async def test_a_revoked_token_is_refused_and_revoking_twice_is_not_found() -> None:
    ts = TokenStore(MemoryStore())
    token, info = await ts.create(Role.ADMIN, "alice")
    keep, _ = await ts.create(Role.READ_ONLY)
    assert (await ts.revoke(info.id)).id == info.id
    assert await ts.verify(token) is None
    assert await ts.verify(keep) is not None
    with pytest.raises(NotFoundError):
        await ts.revoke(info.id)
    with pytest.raises(NotFoundError):
        await ts.revoke("../../etc")


async def test_digests_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str]] = []
    real = api_tokens.hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(api_tokens.hmac, "compare_digest", spy)
    ts = TokenStore(MemoryStore())
    token, _ = await ts.create(Role.ADMIN)
    await ts.verify(token)
    await ts.verify(token[:-1] + ("x" if token[-1] != "x" else "y"))
    await ts.verify("tulle_" + "f" * 16 + "_" + "a" * 43)  # unknown id: still one comparison
    assert len(calls) == 3


async def test_names_are_checked() -> None:
    ts = TokenStore(MemoryStore())
    with pytest.raises(ValueError, match="name"):
        await ts.create(Role.ADMIN, "x" * 64)
    with pytest.raises(ValueError, match="name"):
        await ts.create(Role.ADMIN, "a\nb")


async def test_the_admin_token_file_is_0600_and_kept_while_valid(tmp_path: Path) -> None:
    store = MemoryStore()
    ts = TokenStore(store)
    path = tmp_path / "state" / "tulle.db.admin-token"
    first = await ensure_admin_token(ts, path)
    assert path.read_text().strip() == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    principal = await ts.verify(first)
    assert principal is not None and principal.role is Role.ADMIN
    assert await ensure_admin_token(ts, path) == first  # a restart keeps it
    assert len(await ts.list()) == 1
    path.chmod(0o644)
    assert await ensure_admin_token(ts, path) == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # tightened


async def test_a_stale_admin_token_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "admin-token"
    old = await ensure_admin_token(TokenStore(MemoryStore()), path)
    fresh_store = TokenStore(MemoryStore())  # e.g. a memory store after a restart
    new = await ensure_admin_token(fresh_store, path)
    assert new != old and path.read_text().strip() == new
    assert await fresh_store.verify(new) is not None
    # A read-only token in the file is not an admin token: replaced too.
    ro, _ = await fresh_store.create(Role.READ_ONLY)
    path.write_text(ro)
    assert await ensure_admin_token(fresh_store, path) not in (ro, new)


async def test_the_admin_token_is_never_logged(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    token = await ensure_admin_token(TokenStore(MemoryStore()), tmp_path / "t")
    secret = token.split("_", 2)[2]
    assert caplog.records and secret not in caplog.text


async def test_the_cli_and_the_control_plane_agree_on_file_and_shape(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert credentials.ADMIN_TOKEN_SUFFIX == admin_token.ADMIN_TOKEN_SUFFIX
    monkeypatch.delenv("TULLE_ADMIN_TOKEN_FILE", raising=False)
    for store in ("sqlite:tulle.db", "sqlite:/var/lib/tulle/cp.db"):
        monkeypatch.setenv("TULLE_STORE", store)
        assert credentials.local_admin_token_file() == default_admin_token_file(store)
    assert default_admin_token_file("memory") is None
    assert default_admin_token_file("postgresql://x@db/t") is None
    token, info = await TokenStore(MemoryStore()).create(Role.ADMIN)
    assert credentials.token_id(token) == info.id
    assert credentials.token_id(info.id) is None


async def test_an_admin_token_file_that_is_a_link_is_replaced_not_followed(
        tmp_path: Path) -> None:
    """Attack review A2 (ADR 0060): a link in the file's place -- planted or raced in -- is
    neither read nor chmod-ed through to its target; the control plane writes a file of its
    own in its place."""
    ts = TokenStore(MemoryStore())
    valid = await ensure_admin_token(ts, tmp_path / "first")
    target = tmp_path / "target"
    target.write_text(valid)
    target.chmod(0o644)
    path = tmp_path / "tulle.db.admin-token"
    path.symlink_to(target)
    got = await ensure_admin_token(ts, path)
    assert got != valid and not path.is_symlink() and path.read_text().strip() == got
    assert stat.S_IMODE(target.stat().st_mode) == 0o644 and target.read_text() == valid


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
async def test_an_admin_token_file_of_another_user_is_replaced(tmp_path: Path) -> None:
    ts = TokenStore(MemoryStore())
    path = tmp_path / "tulle.db.admin-token"
    planted = await ensure_admin_token(ts, path)
    os.chown(path, 65534, 65534)  # as if another user had put a token they know there
    got = await ensure_admin_token(ts, path)
    assert got != planted and path.stat().st_uid == os.geteuid()
