"""`status.proxy` writes (ADR 0040): a session's end never overrides a newer session."""

from __future__ import annotations

import pytest

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


# -- the presence writer folds what waits (ADR 0109) --------------------------------------------

Report = tuple[str, str, str]  # (state, reason, session)


async def _stored_after(reports: list[Report], initial: Report | None, folded: bool
                        ) -> tuple[str, str, str] | None:
    """`status.proxy` (state, session, reason) after `reports`, written one by one with
    `record` or folded by the `PresenceWriter`, over a Workload holding `initial`."""
    import asyncio

    store = MemoryStore()
    await store.create(WL)
    if initial is not None:
        assert await readiness.record(store, "shop", "api-0", initial[0],  # type: ignore[arg-type]
                                      initial[1], initial[2], "cp")
    if folded:
        writer = readiness.PresenceWriter(store, "cp")
        for state, reason, session in reports:
            writer.submit([("shop", "api-0")], state == "Connected", reason, session)
        assert len(writer.pending) == 1
        writer.start()
        try:
            async with asyncio.timeout(5):
                while writer.pending or writer.written < 1:
                    await asyncio.sleep(0.001)
        finally:
            await writer.stop()
    else:
        for state, reason, session in reports:
            await readiness.record(store, "shop", "api-0", state, reason,  # type: ignore[arg-type]
                                   session, "cp")
    proxy = (await store.get("Workload", "shop", "api-0")).get("status", {}).get("proxy")
    return (proxy["state"], proxy["session"], proxy["reason"]) if proxy else None


C, D = "Connected", "Disconnected"
CASES: list[tuple[Report | None, list[Report]]] = [
    (None, [(C, "c", "s1"), (D, "closed", "s1"), (C, "c", "s2"), (D, "reset", "s2")]),
    (None, [(C, "c", "s1"), (C, "c", "s2"), (D, "late end", "s1")]),
    ((C, "c", "s0"), [(D, "closed", "s1")]),
    ((C, "c", "s0"), [(D, "closed", "s0"), (C, "c", "s1")]),
    ((C, "c", "s0"), [(D, "draining", "s0"), (D, "closed", "s0")]),
    ((C, "c", "s0"), [(D, "other", "s9"), (D, "closed", "s0")]),
    (None, [(D, "first", "s1"), (D, "second", "s2")]),
    ((C, "c", "s0"), [(C, "c", "s1"), (D, "draining", "s1"), (D, "closed", "s1"),
                      (D, "stale", "s0")]),
]


@pytest.mark.parametrize(("initial", "reports"), CASES)
async def test_folded_reports_store_what_writing_them_in_order_stores(
        initial: Report | None, reports: list[Report]) -> None:
    assert await _stored_after(reports, initial, folded=True) == \
        await _stored_after(reports, initial, folded=False)


async def test_a_proxy_reconnecting_in_a_loop_holds_one_entry_and_one_write() -> None:
    """Before: two queue entries and two store writes per reconnect, one write in flight; a
    loop of reconnects outran the writer and every other workload's report waited behind it."""
    import asyncio

    store = MemoryStore()
    await store.create(WL)
    await store.create({**WL, "metadata": {"name": "other", "namespace": "shop"}})
    writer = readiness.PresenceWriter(store, "cp")
    for i in range(1000):
        writer.submit([("shop", "api-0")], True, "connected", f"s{i}")
        writer.submit([("shop", "api-0")], False, "reset", f"s{i}")
    writer.submit([("shop", "other")], False, "closed", "o1")
    assert len(writer.pending) == 2 and writer.folded == 1999
    writer.start()
    try:
        async with asyncio.timeout(5):
            while writer.pending or writer.written < 2:
                await asyncio.sleep(0.001)
    finally:
        await writer.stop()
    assert writer.written == 2
    assert (await state(store))["session"] == "s999"
    assert (await state(store))["state"] == "Disconnected"


# -- a session that does not serve yet claims the workload, out (ADR 0116) ----------------------

async def _claimed_then(reports: list[tuple[str, str, str, bool]], folded: bool
                        ) -> tuple[str, str, str]:
    """(state, session, reason) stored after `reports` (state, reason, session, claim) over a
    Workload whose proxy was `Connected` on session s0."""
    import asyncio

    store = MemoryStore()
    await store.create(WL)
    assert await readiness.record(store, "shop", "api-0", "Connected", "connected", "s0", "cp")
    if folded:
        writer = readiness.PresenceWriter(store, "cp")
        for state, reason, session, claim in reports:
            writer.submit([("shop", "api-0")], state == "Connected", reason, session,
                          claim=claim)
        writer.start()
        try:
            async with asyncio.timeout(5):
                while writer.pending or writer.written < 1:
                    await asyncio.sleep(0.001)
        finally:
            await writer.stop()
    else:
        for state, reason, session, claim in reports:
            await readiness.record(store, "shop", "api-0", state, reason,  # type: ignore[arg-type]
                                   session, "cp", force=claim or state == "Connected")
    proxy = (await store.get("Workload", "shop", "api-0"))["status"]["proxy"]
    return proxy["state"], proxy["session"], proxy["reason"]


S = readiness.STARTING
CLAIMS: list[tuple[list[tuple[str, str, str, bool]], tuple[str, str, str]]] = [
    # A restarted proxy: its new session is out at once, whatever the old one left stored.
    ([(D, S, "s1", True)], (D, "s1", S)),
    # The old stream's end, handled late, does not touch the new session's state.
    ([(D, S, "s1", True), (D, "reset", "s0", False)], (D, "s1", S)),
    # Its first ACK: in.
    ([(D, S, "s1", True), (C, "connected", "s1", False), (D, "late", "s0", False)],
     (C, "s1", "connected")),
    # Its first snapshot NACKed: still out, saying why.
    ([(D, S, "s1", True), (D, readiness.first_config_rejected("v7"), "s1", False)],
     (D, "s1", readiness.first_config_rejected("v7"))),
]


@pytest.mark.parametrize(("reports", "expected"), CLAIMS)
async def test_a_starting_session_is_out_until_it_serves(
        reports: list[tuple[str, str, str, bool]], expected: tuple[str, str, str]) -> None:
    assert await _claimed_then(reports, folded=False) == expected
    assert await _claimed_then(reports, folded=True) == expected


def test_the_cli_reads_the_starting_reasons_the_control_plane_writes() -> None:
    from tulle.cli.get import _connected, _proxy_state
    from tulle.cli.proxy_state import STARTING_PREFIX, starting

    for reason in (readiness.STARTING, readiness.first_config_rejected("v1")):
        proxy = {"state": "Disconnected", "reason": reason}
        assert reason.startswith(STARTING_PREFIX) and starting(proxy)
        assert _proxy_state(proxy).startswith("starting, out of endpoints: ")
    assert not starting({"state": "Disconnected", "reason": "the proxy closed the stream"})
    assert _connected({"connected": True, "serving": False}) == "yes, starting"
    assert _connected({"connected": True, "serving": False, "draining": True}) == "yes, draining"
    assert _connected({"connected": True}) == "yes"  # (a control plane from before ADR 0116)
    assert _connected({"connected": False, "serving": True}) == "no"
