"""The control plane compiles what the store committed: whole transactions only, and on after its
watch expired (ADR 0121).

One `apply` is one store transaction (ADR 0077), but the store's watch hands the changes on in
pages of 500, and the reconciler compiled as soon as the first page was in: ADR 0109 saw a
3,000-document apply first compiled with 167 of its 1,000 Services, and pushed to the proxies
like that.  A transaction that adds a Service and the policy guarding it could reach the
proxies without the policy.  Here a real control plane (SQLite, then PostgreSQL) takes one
apply of 1,200 Services; every compilation must see none of them or all of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.support.controlplane import apply, eventually, running_control_plane
from tests.support.postgres import fresh_schema, postgres_server
from tests.support.resources import service

from tulle.controlplane import compile_worker
from tulle.controlplane.compiler import MeshInputs, compile_mesh
from tulle.controlplane.main import ControlPlane

__all__ = ["postgres_server"]  # the fixture, imported so that pytest finds it

N = 1200
"""Services in the one apply: more than two pages of the watch (500 each)."""


async def _every_compilation_sees_all_or_none(cp: ControlPlane,
                                              monkeypatch: pytest.MonkeyPatch) -> list[int]:
    seen: list[int] = []
    real = compile_mesh

    def counted(inputs: MeshInputs, *args: Any, **kwargs: Any) -> Any:
        """Each compilation's inputs, counted as the compiler gets them (not `apply`'s
        preview, which compiles the documents over the current state)."""
        seen.append(sum(1 for k in inputs.services if k[0] == "bulk"))
        return real(inputs, *args, **kwargs)

    monkeypatch.setattr(compile_worker, "compile_mesh", counted)
    status, body = await apply(cp.api_url, *(service(f"s{i:04d}", ns="bulk", app="x")
                                             for i in range(N)))
    assert status == 200, str(body)[:300]
    await eventually(lambda: bool(seen) and seen[-1] == N, timeout=60)
    return seen


async def test_an_apply_is_compiled_whole_on_sqlite(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    async with running_control_plane(f"sqlite:{tmp_path / 'cp.db'}") as cp:
        seen = await _every_compilation_sees_all_or_none(cp, monkeypatch)
    assert set(seen) <= {0, N}, seen


async def test_an_apply_is_compiled_whole_on_postgres(postgres_server: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    async with fresh_schema(postgres_server) as url, running_control_plane(url) as cp:
        seen = await _every_compilation_sees_all_or_none(cp, monkeypatch)
    assert set(seen) <= {0, N}, seen


async def test_a_watch_that_expired_lists_again_and_compiles_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The change log keeps the last `store_changes_retained` changes; a watch behind that
    expires (410).  The reconciler's watch runs beside its compile loop, and its expiry went
    unseen: the loop waited for changes for ever, and the control plane never compiled again
    (nothing logged, nothing pushed).  Now the reconciler lists again and goes on."""
    async with running_control_plane("memory", store_changes_retained=100) as cp:
        seen = await _every_compilation_sees_all_or_none(cp, monkeypatch)  # 1,200 > 100
        status, body = await apply(cp.api_url, service("later", ns="bulk", app="x"))
        assert status == 200, body
        await eventually(lambda: seen[-1] == N + 1, timeout=20)
    assert set(seen[:-1]) <= {0, N}, seen
