"""`status.proxy` writes (ADR 0040): a session's end never overrides a newer session."""

from __future__ import annotations

from tulle.controlplane import readiness
from tulle.controlplane.store.memory import MemoryStore

WL = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
      "metadata": {"name": "api-0", "namespace": "shop"},
      "spec": {"address": "127.0.0.1"}}


async def state(store: MemoryStore) -> dict[str, str]:
    return dict((await store.get("Workload", "shop", "api-0"))["status"]["proxy"])


async def test_an_old_sessions_disconnect_does_not_undo_a_reconnect() -> None:
    store = MemoryStore()
    await store.create(WL)
    assert await readiness.record(store, "shop", "api-0", "Connected", "connected", "s1", "cp-a")
    # The proxy reconnects to replica B before A notices that the old stream is dead.
    assert await readiness.record(store, "shop", "api-0", "Connected", "connected", "s2", "cp-b")
    assert not await readiness.record(store, "shop", "api-0", "Disconnected", "silent", "s1",
                                      "cp-a")
    st = await state(store)
    assert (st["state"], st["session"], st["controlPlane"]) == ("Connected", "s2", "cp-b")
    assert await readiness.record(store, "shop", "api-0", "Disconnected", "closed", "s2", "cp-b")
    st = await state(store)
    assert (st["state"], st["reason"]) == ("Disconnected", "closed")


async def test_a_deleted_workload_is_not_recreated() -> None:
    store = MemoryStore()
    assert not await readiness.record(store, "shop", "gone", "Connected", "c", "s1", "cp")


def test_only_in_or_out_of_a_proxys_status_makes_a_compilation() -> None:
    from tulle.controlplane.reconcile import _same_inputs

    def with_proxy(state: str, session: str) -> dict[str, object]:
        return {**WL, "status": {"proxy": {"state": state, "session": session,
                                           "since": session}}}

    assert _same_inputs(with_proxy("Connected", "s1"), with_proxy("Connected", "s2"))
    assert _same_inputs(with_proxy("Disconnected", "s1"), with_proxy("Disconnected", "s2"))
    assert not _same_inputs(with_proxy("Connected", "s1"), with_proxy("Disconnected", "s1"))
    assert _same_inputs(WL, with_proxy("Connected", "s1"))  # first connect: still in
    assert not _same_inputs(WL, with_proxy("Disconnected", "s1"))
