"""Apply's checks run off the event loop (ADR 0128): the state is captured on the loop when an
apply's turn comes, the compilation runs on one worker thread, one apply at a time (also when
an apply is cancelled mid-check), and an applied object changed while its checks run still
refuses the apply (409), nothing written."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from typing import Any

from tests.support.resources import NS, service

from tulle.controlplane.api.apply import apply_documents
from tulle.controlplane.api.apply_checks import ApplyChecks, Checks
from tulle.controlplane.store.memory import MemoryStore
from tulle.controlplane.store.protocol import Obj


class Log:
    """What the capture and the work saw, and how many works ran at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[str] = []
        self.running = 0
        self.most = 0

    def note(self, what: str) -> None:
        with self.lock:
            self.events.append(what)


async def test_one_apply_at_a_time_each_over_the_state_of_its_own_turn() -> None:
    log, state = Log(), [0]
    loop_thread = threading.current_thread()

    def capture() -> Checks:
        assert threading.current_thread() is loop_thread  # (on the loop)
        log.note(f"capture {state[0]}")
        seen = state[0]

        def preview(_: list[Obj]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
            return {("seen", str(seen), ""): []}
        return Checks(preview=preview)

    def work(name: str, checks: Checks) -> Any:
        assert threading.current_thread() is not loop_thread
        assert threading.current_thread().name.startswith("tulle-apply-check")
        with log.lock:
            log.running += 1
            log.most = max(log.most, log.running)
        time.sleep(0.2)
        state[0] += 1  # (what the next capture sees)
        with log.lock:
            log.running -= 1
        assert checks.preview is not None
        log.note(f"{name} done")
        return checks.preview([])

    checks = ApplyChecks(capture)
    try:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick = asyncio.ensure_future(ticker())
        a, b = await asyncio.gather(checks.run(lambda c: work("a", c)),
                                    checks.run(lambda c: work("b", c)))
        tick.cancel()
        assert log.most == 1
        assert log.events == ["capture 0", "a done", "capture 1", "b done"]
        assert list(a) == [("seen", "0", "")] and list(b) == [("seen", "1", "")]
        assert ticks >= 20  # the loop went on while the works ran (0.4 s)
    finally:
        checks.close()


async def test_an_apply_cancelled_mid_check_leaves_its_turn_the_next_waits_for_the_work() -> None:
    log = Log()
    release = threading.Event()

    def work(name: str, _: Checks) -> str:
        with log.lock:
            log.running += 1
            log.most = max(log.most, log.running)
        if name == "a":
            assert release.wait(10)
        with log.lock:
            log.running -= 1
        log.note(f"{name} done")
        return name

    checks = ApplyChecks(lambda: Checks())
    try:
        a = asyncio.ensure_future(checks.run(lambda c: work("a", c)))
        await asyncio.sleep(0.1)
        a.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await a
        b = asyncio.ensure_future(checks.run(lambda c: work("b", c)))
        await asyncio.sleep(0.1)
        assert not b.done()  # its turn came, its work waits for a's on the worker
        release.set()
        assert await b == "b"
        assert log.events == ["a done", "b done"] and log.most == 1
    finally:
        checks.close()


async def test_an_object_changed_while_the_checks_run_refuses_the_apply() -> None:
    """The write is checked against the versions read before the checks: a change made
    meanwhile (the loop serves other requests now) is a 409, and nothing is written."""
    store = MemoryStore()
    await store.create(service("a", app="x"))
    inside, go = threading.Event(), threading.Event()

    def preview(objs: list[Obj]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
        inside.set()
        assert go.wait(10)
        return {}

    checks = ApplyChecks(lambda: Checks(preview=preview))
    try:
        job = asyncio.ensure_future(apply_documents(
            store, [service("a", app="y"), service("b", app="y")], [], False, checks=checks))
        assert await asyncio.to_thread(inside.wait, 10)
        current = await store.get("Service", NS, "a")
        await store.update({**current, "spec": {**current["spec"], "selector": {"app": "z"}}})
        go.set()
        response = await job
        assert response.status_code == 409
        body = json.loads(bytes(response.body))
        (detail,) = body["details"]
        assert detail["name"] == "a" and "changed during this apply" in (
            detail["errors"][0]["message"]), body
        assert (await store.get("Service", NS, "a"))["spec"]["selector"] == {"app": "z"}
        names = [o["metadata"]["name"] for o in (await store.list("Service", NS))[0]]
        assert names == ["a"]  # (b not written either: all or nothing)
    finally:
        checks.close()


async def _apply_while_a_status_is_written(pin: bool) -> tuple[Any, MemoryStore]:
    """Apply Service `a` (new selector) while the control plane writes `a`'s status only."""
    store = MemoryStore()
    created = await store.create(service("a", app="x"))
    inside, go = threading.Event(), threading.Event()

    def preview(objs: list[Obj]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
        inside.set()
        assert go.wait(10)
        return {}

    doc = service("a", app="y")
    if pin:
        doc["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    checks = ApplyChecks(lambda: Checks(preview=preview))
    try:
        job = asyncio.ensure_future(apply_documents(store, [doc], [], False, checks=checks))
        assert await asyncio.to_thread(inside.wait, 10)
        current = await store.get("Service", NS, "a")
        await store.update_status({**current, "status": {"virtualIP": "240.240.0.9"}})
        go.set()
        return await job, store
    finally:
        checks.close()


async def test_a_status_written_while_the_checks_run_does_not_refuse_the_apply() -> None:
    """The control plane's own status writes (here a virtual IP) bump the version but change
    nothing the user applies: the apply is written over the newer version, status kept
    (ADR 0133: with the reconciler compiling on its worker, applying one object twice in a row
    met its conditions write in 6 of 12 runs)."""
    response, store = await _apply_while_a_status_is_written(pin=False)
    assert response.status_code == 200, bytes(response.body)
    stored = await store.get("Service", NS, "a")
    assert stored["spec"]["selector"] == {"app": "y"}
    assert stored["status"] == {"virtualIP": "240.240.0.9"}


async def test_a_document_naming_its_version_is_refused_after_any_write() -> None:
    response, store = await _apply_while_a_status_is_written(pin=True)
    assert response.status_code == 409, bytes(response.body)
    assert (await store.get("Service", NS, "a"))["spec"]["selector"] == {"app": "x"}
