"""`tulle get -w` as a subprocess against a real control plane (ADR 0104): an object created and
deleted within 100 ms is shown and then DELETED (the poll it replaced never showed it), `-o
json` prints a document per change, a watch ended with a 410 lists again and shows what
changed meanwhile, and Ctrl-C ends it with exit 0 and no traceback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from tests.support.cli import PYTHONPATH, TULLE
from tests.support.controlplane import (
    admin_token,
    apply_until_not_409,
    auth,
    eventually,
    running_control_plane,
)

from tulle.controlplane.api.watch_routes import WatchLimits

V1 = "mesh.tulle.dev/v1alpha1"


def svc(name: str, port: int = 80) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "Service",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"selector": {"app": name}, "ports": [{"port": port}]}}


class Watching:
    """A running `tulle get ... -w` and what it printed so far."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err: list[str] = []

    def text(self) -> str:
        return "\n".join(self.out)


@contextlib.asynccontextmanager
async def tulle_watching(api: str, *args: str) -> AsyncIterator[Watching]:
    proc = await asyncio.create_subprocess_exec(
        TULLE, *args,
        env={"TULLE_SERVER": api, "TULLE_TOKEN": admin_token(api), "PATH": "/usr/bin:/bin",
             "HOME": "/nonexistent", **PYTHONPATH},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    w = Watching(proc)

    async def pump(stream: asyncio.StreamReader | None, into: list[str]) -> None:
        assert stream is not None
        while line := await stream.readline():
            into.append(line.decode().rstrip("\n"))

    tasks = [asyncio.create_task(pump(proc.stdout, w.out)),
             asyncio.create_task(pump(proc.stderr, w.err))]
    try:
        yield w
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            try:
                code = await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                raise
            assert code == 0, (w.out, w.err)
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert not any("Traceback" in x for x in w.err), w.err




async def test_an_object_created_and_deleted_within_100ms_is_shown_then_deleted(
        tmp_path: Path) -> None:
    async with running_control_plane(f"sqlite:{tmp_path / 'cp.db'}") as cp, \
            aiohttp.ClientSession(headers=auth(cp.api_url)) as s:
        await apply_until_not_409(s, cp.api_url, svc("stays"))
        async with tulle_watching(cp.api_url, "get", "svc", "-n", "shop", "-w") as w:
            await eventually(lambda: any(x.startswith("shop") and " stays " in f"{x} "
                                         for x in w.out), timeout=15)
            listed = len(w.out)
            await asyncio.sleep(0.5)  # (the watch is open once the list is printed)
            t0 = asyncio.get_running_loop().time()
            await apply_until_not_409(s, cp.api_url, svc("blink"))
            async with s.delete(f"{cp.api_url}/api/v1/resources/services/blink",
                                params={"namespace": "shop"}) as r:
                assert r.status == 200
            assert asyncio.get_running_loop().time() - t0 < 0.1
            await eventually(lambda: "DELETED   service/blink -n shop" in w.out, timeout=10)
            changes = w.out[listed:]
            shown = [i for i, x in enumerate(changes) if x.split()[:2] == ["shop", "blink"]]
            assert shown and shown[0] < changes.index("DELETED   service/blink -n shop"), changes


async def test_json_output_prints_one_document_per_change(tmp_path: Path) -> None:
    async with running_control_plane(f"sqlite:{tmp_path / 'cp.db'}") as cp, \
            aiohttp.ClientSession(headers=auth(cp.api_url)) as s, \
            tulle_watching(cp.api_url, "get", "svc", "-n", "shop", "-w", "-o", "json") as w:
        await eventually(lambda: '"kind": "List"' in w.text(), timeout=15)
        await asyncio.sleep(0.5)
        await apply_until_not_409(s, cp.api_url, svc("one"))
        await apply_until_not_409(s, cp.api_url, svc("one", port=81))

        def docs() -> list[dict[str, Any]]:
            text, out, i = w.text(), [], 0
            dec = json.JSONDecoder()
            while i < len(text):
                if text[i].isspace():
                    i += 1
                    continue
                try:
                    doc, i = dec.raw_decode(text, i)
                except ValueError:
                    break  # (a document still being printed)
                out.append(doc)
            return out

        await eventually(lambda: any(d.get("kind") == "Service" and d["spec"]["ports"][0][
            "port"] == 81 for d in docs()), timeout=10)
        services = [d for d in docs() if d.get("kind") == "Service"]
        assert services[0]["spec"]["ports"][0]["port"] == 80
        assert docs()[0]["kind"] == "List"


async def test_a_410_lists_again_and_shows_what_changed_meanwhile(tmp_path: Path) -> None:
    """A queue of one event: a three-document apply puts the watch behind, the API ends it
    with a 410 ERROR, and `tulle get -w` lists again: every object still shows, once the
    list reports it, and nothing is printed to stderr."""
    async with running_control_plane(f"sqlite:{tmp_path / 'cp.db'}",
                                     api_watch=WatchLimits(queue=1)) as cp, \
            aiohttp.ClientSession(headers=auth(cp.api_url)) as s, \
            tulle_watching(cp.api_url, "get", "svc", "-n", "shop", "-w") as w:
        await asyncio.sleep(1.5)
        names = [f"b{i}" for i in range(6)]
        await apply_until_not_409(s, cp.api_url, *[svc(n) for n in names])

        def all_shown() -> bool:
            return all(any(x.split()[:2] == ["shop", n] for x in w.out) for n in names)

        await eventually(all_shown, timeout=10)
        # and it keeps watching after the re-list
        async with s.delete(f"{cp.api_url}/api/v1/resources/services/b0",
                            params={"namespace": "shop"}) as r:
            assert r.status == 200
        await eventually(lambda: "DELETED   service/b0 -n shop" in w.out, timeout=10)
        assert [x for x in w.err if not x.startswith("No resources found")] == [], w.err


async def test_a_dropped_connection_lists_again_and_shows_what_changed_meanwhile(
        tmp_path: Path) -> None:
    """The control plane stops (its watches end), the store changes while it is away, and it
    comes back: `tulle get -w` says so on stderr, then prints the new object and the deleted
    one, and keeps watching."""
    from tests.support.controlplane import ControlPlaneProcess

    from tulle.controlplane.store.sqlite import SqliteStore

    db = tmp_path / "cp.db"
    cp = ControlPlaneProcess(f"sqlite:{db}", tmp_path)
    cp.start()
    try:
        await cp.wait_ready()
        async with aiohttp.ClientSession(headers=auth(cp.api)) as s:
            await apply_until_not_409(s, cp.api, svc("goes"))
        async with tulle_watching(cp.api, "get", "svc", "-n", "shop", "-w") as w:
            await eventually(lambda: any(x.split()[:2] == ["shop", "goes"] for x in w.out),
                             timeout=15)
            assert cp.proc is not None
            cp.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(cp.proc.wait, 20) == 0
            await eventually(lambda: any("(still watching)" in x for x in w.err), timeout=15)
            store = await SqliteStore.open(db)
            try:
                await store.create(svc("came"))
                await store.delete("Service", "shop", "goes")
            finally:
                await store.close()
            cp.start()
            await cp.wait_ready()
            await eventually(lambda: "DELETED   service/goes -n shop" in w.out, timeout=15)
            await eventually(lambda: any(x.split()[:2] == ["shop", "came"] for x in w.out),
                             timeout=5)
            async with aiohttp.ClientSession(headers=auth(cp.api)) as s:
                await apply_until_not_409(s, cp.api, svc("after"))
            await eventually(lambda: any(x.split()[:2] == ["shop", "after"] for x in w.out),
                             timeout=10)
    finally:
        cp.kill()


async def test_several_kinds_and_one_name_are_followed(tmp_path: Path) -> None:
    """`get svc,wl -w` follows both kinds; `get svc NAME -w` shows that one only."""
    from tests.support.resources import workload

    async with running_control_plane(f"sqlite:{tmp_path / 'cp.db'}") as cp, \
            aiohttp.ClientSession(headers=auth(cp.api_url)) as s:
        await apply_until_not_409(s, cp.api_url, svc("named"))
        async with tulle_watching(cp.api_url, "get", "svc,wl", "-n", "shop", "-w") as both, \
                tulle_watching(cp.api_url, "get", "svc", "named", "-n", "shop", "-w") as one:
            await eventually(lambda: len(both.out) >= 2 and len(one.out) >= 2, timeout=15)
            await asyncio.sleep(1.0)
            await apply_until_not_409(s, cp.api_url, workload("w1", 18080, 18081, 18082), svc("other"))
            await apply_until_not_409(s, cp.api_url, svc("named", port=82))
            await eventually(lambda: any(x.split()[:2] == ["shop", "w1"] for x in both.out)
                             and any(x.split()[:2] == ["shop", "other"] for x in both.out),
                             timeout=10)
            await eventually(lambda: any("82/" in x for x in one.out), timeout=10)
            assert not any(x.split()[:2] == ["shop", "other"] for x in one.out), one.out
            assert not any("error" in x for x in both.err + one.err), (both.err, one.err)
