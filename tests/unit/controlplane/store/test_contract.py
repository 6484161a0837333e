"""The ResourceStore contract, run against every backend: memory, SQLite, real PostgreSQL.

Each test opens fresh stores through `open_backend` (SQLite in tmp_path, PostgreSQL in a fresh
schema of the session's throwaway server).  Watchers use a long poll interval, so a watch test
passes only if notifications work, not by polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from tests.support.postgres import fresh_schema, postgres_server  # noqa: F401  (fixture)

from tulle.controlplane.store import (
    AlreadyExistsError,
    BatchError,
    BatchOp,
    ConflictError,
    ExpiredError,
    InvalidObjectError,
    NotFoundError,
    ResourceStore,
    WatchEvent,
    open_store,
)

Opener = Callable[..., Awaitable[ResourceStore]]
BACKENDS = ["memory", "sqlite", "postgres"]
NO_POLL = 30.0  # seconds; longer than any test waits for an event


@pytest.fixture(params=BACKENDS)
async def open_backend(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Opener]:
    """Opens stores of this backend (all on the same data); closes them at the end."""
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "memory":
            url = "memory"
        elif request.param == "sqlite":
            url = f"sqlite:{tmp_path}/store.db"
        else:
            server = request.getfixturevalue("postgres_server")
            url = await stack.enter_async_context(fresh_schema(server))

        async def opener(**options: Any) -> ResourceStore:
            options.setdefault("poll_interval", NO_POLL)
            store = await open_store(url, **options)
            stack.push_async_callback(store.close)
            return store

        yield opener


@pytest.fixture
async def store(open_backend: Opener) -> ResourceStore:
    return await open_backend()


def route(name: str, namespace: str | None = "default", labels: dict[str, str] | None = None,
          spec: dict[str, Any] | None = None, kind: str = "HTTPRoute") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if labels is not None:
        meta["labels"] = labels
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": kind, "metadata": meta,
            "spec": spec if spec is not None else {"hostnames": [f"{name}.example"]}}


async def take(events: AsyncIterator[WatchEvent], n: int, timeout: float = 5.0) -> list[WatchEvent]:
    out: list[WatchEvent] = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            out.append(await anext(events))
    return out


# -- create / get / list ------------------------------------------------------------------------


async def test_create_assigns_server_owned_metadata(store: ResourceStore) -> None:
    given = route("web")
    original = copy.deepcopy(given)
    created = await store.create(given)
    assert given == original, "the caller's dict must not be modified"
    meta = created["metadata"]
    assert meta["generation"] == 1
    assert meta["resourceVersion"] == "1"
    assert len(meta["uid"]) == 36
    assert meta["creationTimestamp"].endswith("Z")
    assert created["spec"] == given["spec"]
    assert await store.get("HTTPRoute", "default", "web") == created


async def test_cluster_scoped_objects_have_no_namespace(store: ResourceStore) -> None:
    created = await store.create(route("mesh", namespace=None, kind="Mesh"))
    assert "namespace" not in created["metadata"]
    assert await store.get("Mesh", None, "mesh") == created
    with pytest.raises(NotFoundError):
        await store.get("Mesh", "default", "mesh")


async def test_create_existing_is_refused(store: ResourceStore) -> None:
    await store.create(route("web"))
    with pytest.raises(AlreadyExistsError, match="HTTPRoute default/web"):
        await store.create(route("web", spec={"other": True}))
    assert (await store.get("HTTPRoute", "default", "web"))["spec"] == route("web")["spec"]
    await store.create(route("web", namespace="other"))  # another namespace is another key


async def test_missing_objects_raise_not_found(store: ResourceStore) -> None:
    with pytest.raises(NotFoundError):
        await store.get("HTTPRoute", "default", "nope")
    with pytest.raises(NotFoundError):
        await store.update({**route("nope"), "metadata": {"name": "nope", "namespace": "default",
                                                          "resourceVersion": "1"}})
    with pytest.raises(NotFoundError):
        await store.update_status({**route("nope"), "status": {}})
    with pytest.raises(NotFoundError):
        await store.delete("HTTPRoute", "default", "nope")


async def test_objects_without_a_key_are_invalid(store: ResourceStore) -> None:
    with pytest.raises(InvalidObjectError):
        await store.create({"metadata": {"name": "x"}})
    with pytest.raises(InvalidObjectError):
        await store.create({"kind": "Service", "metadata": {}})
    with pytest.raises(InvalidObjectError):
        await store.create({**route("x"), "spec": {"port": object()}})
    assert (await store.list())[0] == []


async def test_returned_objects_are_copies(store: ResourceStore) -> None:
    created = await store.create(route("web"))
    created["spec"]["hostnames"].append("mutated")
    items, _ = await store.list()
    items[0]["metadata"]["labels"] = {"mutated": "yes"}
    stored = await store.get("HTTPRoute", "default", "web")
    assert stored["spec"] == {"hostnames": ["web.example"]}
    assert "labels" not in stored["metadata"]


async def test_list_filters_orders_and_reports_its_revision(store: ResourceStore) -> None:
    await store.create(route("b", namespace="ns1"))
    await store.create(route("a", namespace="ns2"))
    await store.create(route("a", namespace="ns1"))
    await store.create(route("svc", namespace="ns1", kind="Service"))
    items, revision = await store.list()
    assert revision == 4
    assert [(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in items] == [
        ("HTTPRoute", "ns1", "a"), ("HTTPRoute", "ns1", "b"), ("HTTPRoute", "ns2", "a"),
        ("Service", "ns1", "svc")]
    items, _ = await store.list(kind="HTTPRoute", namespace="ns1")
    assert [o["metadata"]["name"] for o in items] == ["a", "b"]
    items, _ = await store.list(namespace="ns2")
    assert [o["metadata"]["name"] for o in items] == ["a"]
    assert (await store.list(kind="Nothing")) == ([], 4)


async def test_list_by_label_selector(store: ResourceStore) -> None:
    await store.create(route("a", labels={"app": "web", "tier": "front"}))
    await store.create(route("b", labels={"app": "api", "tier": "back"}))
    await store.create(route("c", labels={"app": "db"}))
    await store.create(route("d"))

    async def names(selector: Any) -> list[str]:
        items, _ = await store.list(label_selector=selector)
        return [o["metadata"]["name"] for o in items]

    assert await names("app=web") == ["a"]
    assert await names("app==api") == ["b"]
    assert await names({"app": "api", "tier": "back"}) == ["b"]
    assert await names("app!=web") == ["b", "c", "d"]
    assert await names("app in (web, db)") == ["a", "c"]
    assert await names("app notin (web,db)") == ["b", "d"]
    assert await names("tier") == ["a", "b"]
    assert await names("!tier") == ["c", "d"]
    assert await names("app in (web,api),tier=back") == ["b"]
    assert await names("") == ["a", "b", "c", "d"]


async def test_a_list_read_in_pages_gives_every_object_once_in_key_order(
        store: ResourceStore) -> None:
    """ADR 0120: pages of `limit` after a key, with the key to read on from; a selector fills
    a page from further on; writes between pages are seen or missed, never seen twice."""
    for ns, name in [("ns1", "b"), ("ns2", "a"), ("ns1", "a"), ("ns1", "c"), ("ns3", "a")]:
        await store.create(route(name, namespace=ns, labels={"odd": str(name != "b")}))
    await store.create(route("svc", namespace="ns1", kind="Service"))

    async def pages(limit: int, selector: str | None = None,
                    namespace: str | None = None) -> list[list[str]]:
        out: list[list[str]] = []
        after = None
        for _ in range(20):  # bounded: 6 objects
            items, revision, after = await store.list_page("HTTPRoute", namespace, selector,
                                                           after, limit)
            assert revision >= 6
            out.append([f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in items])
            if after is None:
                return out
        raise AssertionError(out)

    assert await pages(2) == [["ns1/a", "ns1/b"], ["ns1/c", "ns2/a"], ["ns3/a"]]
    assert await pages(5) == [["ns1/a", "ns1/b", "ns1/c", "ns2/a", "ns3/a"]]  # exactly full
    assert await pages(10) == [["ns1/a", "ns1/b", "ns1/c", "ns2/a", "ns3/a"]]
    assert await pages(1, namespace="ns1") == [["ns1/a"], ["ns1/b"], ["ns1/c"]]
    assert await pages(2, selector="odd=True") == [["ns1/a", "ns1/c"], ["ns2/a", "ns3/a"]]
    assert await pages(3, selector="odd=False") == [["ns1/b"]]
    assert await pages(3, selector="odd=maybe") == [[]]
    # Between pages: one created before the point read to (missed), one after (seen), one
    # deleted after (not seen): nothing twice.
    first, _, after = await store.list_page("HTTPRoute", None, None, None, 2)
    assert after == ("HTTPRoute", "ns1", "b")
    await store.create(route("0", namespace="ns1"))
    await store.create(route("z", namespace="ns1"))
    await store.delete("HTTPRoute", "ns2", "a")
    rest, _, after = await store.list_page("HTTPRoute", None, None, after, 10)
    assert after is None
    assert [f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in first + rest] == [
        "ns1/a", "ns1/b", "ns1/c", "ns1/z", "ns3/a"]


# -- update / update_status / delete --------------------------------------------------------------


async def test_update_requires_the_current_resource_version(store: ResourceStore) -> None:
    created = await store.create(route("web"))
    first = copy.deepcopy(created)
    first["spec"] = {"hostnames": ["first.example"]}
    updated = await store.update(first)
    assert updated["metadata"]["resourceVersion"] == "2"

    second = copy.deepcopy(created)  # read before the first update: stale now
    second["spec"] = {"hostnames": ["second.example"]}
    with pytest.raises(ConflictError, match="current resourceVersion 2") as err:
        await store.update(second)
    assert err.value.current == "2"
    del second["metadata"]["resourceVersion"]
    with pytest.raises(ConflictError):
        await store.update(second)
    assert await store.get("HTTPRoute", "default", "web") == updated, "concurrent edit overwritten"


async def test_generation_follows_spec_and_server_fields_are_kept(store: ResourceStore) -> None:
    created = await store.create({**route("web"), "status": {"conditions": ["Accepted"]}})
    assert created["status"] == {"conditions": ["Accepted"]}

    relabel = copy.deepcopy(created)
    relabel["metadata"]["labels"] = {"app": "web"}
    relabel["metadata"]["annotations"] = {"note": "x"}
    relabel["metadata"]["uid"] = "forged"
    relabel["metadata"]["creationTimestamp"] = "1970-01-01T00:00:00Z"
    relabel["metadata"]["generation"] = 99
    relabel["status"] = {"conditions": ["Forged"]}
    relabeled = await store.update(relabel)
    assert relabeled["metadata"]["generation"] == 1, "metadata-only change must not bump generation"
    assert relabeled["metadata"]["labels"] == {"app": "web"}
    assert relabeled["metadata"]["annotations"] == {"note": "x"}
    assert relabeled["metadata"]["uid"] == created["metadata"]["uid"]
    assert relabeled["metadata"]["creationTimestamp"] == created["metadata"]["creationTimestamp"]
    assert relabeled["status"] == {"conditions": ["Accepted"]}, "update must not touch status"

    respec = copy.deepcopy(relabeled)
    respec["spec"]["hostnames"] = ["new.example"]
    respecced = await store.update(respec)
    assert respecced["metadata"]["generation"] == 2
    same = await store.update(copy.deepcopy(respecced))
    assert same["metadata"]["generation"] == 2
    assert int(same["metadata"]["resourceVersion"]) > int(respecced["metadata"]["resourceVersion"])


async def test_update_status_changes_only_status(store: ResourceStore) -> None:
    created = await store.create(route("web"))
    change = copy.deepcopy(created)
    change["status"] = {"conditions": [{"type": "Accepted", "status": "True"}]}
    change["spec"] = {"ignored": True}
    change["metadata"]["labels"] = {"ignored": "yes"}
    updated = await store.update_status(change)
    assert updated["status"] == change["status"]
    assert updated["spec"] == created["spec"]
    assert "labels" not in updated["metadata"]
    assert updated["metadata"]["generation"] == 1
    assert updated["metadata"]["resourceVersion"] == "2"
    with pytest.raises(ConflictError):
        await store.update_status(change)  # still carries resourceVersion 1
    assert await store.get("HTTPRoute", "default", "web") == updated


async def test_delete_with_and_without_precondition(store: ResourceStore) -> None:
    a = await store.create(route("a"))
    await store.update(copy.deepcopy(a))  # a is at resourceVersion 2 now
    with pytest.raises(ConflictError):
        await store.delete("HTTPRoute", "default", "a", resource_version="1")
    assert await store.get("HTTPRoute", "default", "a")
    deleted = await store.delete("HTTPRoute", "default", "a", resource_version="2")
    assert deleted["metadata"]["resourceVersion"] == "3"
    assert deleted["metadata"]["uid"] == a["metadata"]["uid"]
    with pytest.raises(NotFoundError):
        await store.get("HTTPRoute", "default", "a")
    await store.create(route("b"))
    await store.delete("HTTPRoute", "default", "b")
    assert await store.list() == ([], 5)
    recreated = await store.create(route("a"))
    assert recreated["metadata"]["uid"] != a["metadata"]["uid"]
    assert recreated["metadata"]["generation"] == 1


async def test_every_write_bumps_one_revision_and_refused_writes_none(store: ResourceStore) -> None:
    versions = [int((await store.create(route(f"r{i}")))["metadata"]["resourceVersion"])
                for i in range(3)]
    versions.append(int((await store.create(route("s", kind="Service")))["metadata"]["resourceVersion"]))
    assert versions == [1, 2, 3, 4]
    with pytest.raises(AlreadyExistsError):
        await store.create(route("r0"))
    with pytest.raises(ConflictError):
        await store.delete("HTTPRoute", "default", "r1", resource_version="1")
    assert (await store.list())[1] == 4
    assert (await store.delete("HTTPRoute", "default", "r1"))["metadata"]["resourceVersion"] == "5"


# -- batch ------------------------------------------------------------------------------------------


async def test_batch_writes_every_operation_with_its_own_revision(store: ResourceStore) -> None:
    a = await store.create(route("a"))
    await store.create(route("gone"))
    stored = await store.batch([
        BatchOp("create", route("b")),
        BatchOp("update", {**copy.deepcopy(a), "spec": {"changed": True}}),
        BatchOp("delete", route("gone")),
        BatchOp("create", route("c", namespace="other")),
    ])
    assert [o["metadata"]["resourceVersion"] for o in stored] == ["3", "4", "5", "6"]
    assert stored[1]["metadata"]["generation"] == 2
    assert (await store.get("HTTPRoute", "default", "a"))["spec"] == {"changed": True}
    with pytest.raises(NotFoundError):
        await store.get("HTTPRoute", "default", "gone")
    items, revision = await store.list()
    assert revision == 6 and sorted(o["metadata"]["name"] for o in items) == ["a", "b", "c"]
    assert await store.batch([]) == []


async def test_batch_update_status_changes_only_status_and_is_version_checked(
        store: ResourceStore) -> None:
    """The control plane's status writes of one compilation go as one batch (ADR 0109)."""
    a, b = await store.create(route("a")), await store.create(route("b"))
    stored = await store.batch([
        BatchOp("update_status", {**copy.deepcopy(a), "status": {"virtualIP": "240.240.0.1"},
                                  "spec": {"ignored": True}}),
        BatchOp("update_status", {**copy.deepcopy(b), "status": {"virtualIP": "240.240.0.2"}}),
    ])
    assert [o["status"] for o in stored] == [{"virtualIP": "240.240.0.1"},
                                             {"virtualIP": "240.240.0.2"}]
    assert stored[0]["spec"] == a["spec"] and stored[0]["metadata"]["generation"] == 1
    assert await store.get("HTTPRoute", "default", "a") == stored[0]
    with pytest.raises(BatchError) as refused:  # `a` as first read is stale now
        await store.batch([BatchOp("update_status", {**copy.deepcopy(stored[1]), "status": {}}),
                           BatchOp("update_status", {**copy.deepcopy(a), "status": {}})])
    assert refused.value.index == 1 and isinstance(refused.value.error, ConflictError)
    assert await store.get("HTTPRoute", "default", "b") == stored[1]


@pytest.mark.parametrize("bad", ["stale", "exists", "missing", "invalid"])
async def test_batch_refused_in_the_middle_writes_nothing(store: ResourceStore, bad: str) -> None:
    a = await store.create(route("a"))
    await store.update({**copy.deepcopy(a), "spec": {"v": 2}})  # `a` as read is now stale
    middle = {
        "stale": BatchOp("update", {**copy.deepcopy(a), "spec": {"v": 3}}),
        "exists": BatchOp("create", route("a")),
        "missing": BatchOp("delete", route("nope")),
        "invalid": BatchOp("create", {"kind": "HTTPRoute", "metadata": {}}),
    }[bad]
    ops = [BatchOp("create", route(f"x{i}")) for i in range(50)]
    with pytest.raises(BatchError) as refused:
        await store.batch([*ops[:25], middle, *ops[25:]])
    assert refused.value.index == 25
    expected = {"stale": ConflictError, "exists": AlreadyExistsError, "missing": NotFoundError,
                "invalid": InvalidObjectError}[bad]
    assert isinstance(refused.value.error, expected)
    items, revision = await store.list()
    assert [o["metadata"]["name"] for o in items] == ["a"] and revision == 2
    assert (await store.create(route("next")))["metadata"]["resourceVersion"] == "3"


async def test_batch_refuses_a_key_given_twice(store: ResourceStore) -> None:
    with pytest.raises(BatchError, match="also operation 0") as refused:
        await store.batch([BatchOp("create", route("a")), BatchOp("create", route("b")),
                           BatchOp("create", route("a", spec={"other": 1}))])
    assert (refused.value.index, refused.value.duplicate_of) == (2, 0)
    assert (await store.list())[0] == []


async def test_watch_and_readers_see_a_batch_only_after_commit(store: ResourceStore) -> None:
    n = 1200  # more than one change-log read (watch.BATCH) and enough rows to take a while
    async with contextlib.aclosing(store.watch(kind="HTTPRoute")) as events:
        waiting = asyncio.ensure_future(take(events, n + 1))
        await asyncio.sleep(0.05)  # let the watch subscribe
        with pytest.raises(BatchError):  # refused at the last operation: nothing is seen
            await store.batch([*(BatchOp("create", route(f"r{i}")) for i in range(n)),
                               BatchOp("delete", route("nope"))])
        seen: set[int] = set()
        done = asyncio.Event()

        async def reader() -> None:
            while not done.is_set():
                seen.add(len((await store.list("HTTPRoute"))[0]))
                await asyncio.sleep(0)

        reading = asyncio.ensure_future(reader())
        await store.batch([BatchOp("create", route(f"r{i}")) for i in range(n)])
        done.set()
        await reading
        await store.create(route("after"))
        got = await waiting
    assert seen <= {0, n}, f"a reader saw part of the batch: {sorted(seen)}"
    assert [e.revision for e in got] == list(range(1, n + 2))
    assert [e.object["metadata"]["name"] for e in got[-2:]] == [f"r{n - 1}", "after"]


# -- watch ------------------------------------------------------------------------------------------


async def test_watch_replays_changes_since_a_revision(store: ResourceStore) -> None:
    a = await store.create(route("a"))
    await store.create(route("b", namespace="other"))
    await store.update({**copy.deepcopy(a), "spec": {"changed": True}})
    await store.create(route("s", kind="Service"))
    await store.delete("HTTPRoute", "other", "b")

    async with contextlib.aclosing(store.watch(since_revision=0)) as events:
        got = await take(events, 5)
    assert [(e.type, e.revision, e.object["metadata"]["name"]) for e in got] == [
        ("ADDED", 1, "a"), ("ADDED", 2, "b"), ("MODIFIED", 3, "a"), ("ADDED", 4, "s"),
        ("DELETED", 5, "b")]
    assert all(e.object["metadata"]["resourceVersion"] == str(e.revision) for e in got)
    assert got[2].object["spec"] == {"changed": True}

    async with contextlib.aclosing(store.watch(kind="HTTPRoute", since_revision=1)) as events:
        got = await take(events, 3)
    assert [(e.type, e.revision) for e in got] == [("ADDED", 2), ("MODIFIED", 3), ("DELETED", 5)]

    async with contextlib.aclosing(store.watch(namespace="default", since_revision=0)) as events:
        got = await take(events, 3)
        assert [e.revision for e in got] == [1, 3, 4]
        await store.create(route("late"))  # replay flows into live
        (live,) = await take(events, 1)
    assert (live.type, live.revision, live.object["metadata"]["name"]) == ("ADDED", 6, "late")


async def test_watch_without_revision_starts_now(store: ResourceStore) -> None:
    await store.create(route("before"))
    async with contextlib.aclosing(store.watch()) as events:
        waiting = asyncio.ensure_future(take(events, 1))
        await asyncio.sleep(0.05)  # let the watch subscribe before the write
        await store.create(route("after"))
        (event,) = await waiting
    assert (event.type, event.object["metadata"]["name"], event.revision) == ("ADDED", "after", 2)


async def test_list_then_watch_misses_nothing_and_repeats_nothing(store: ResourceStore) -> None:
    """A writer runs while we list and start watching: list + events == the final state."""
    halfway = asyncio.Event()

    async def writer() -> None:
        for i in range(40):
            name = f"o{i % 7}"
            try:
                current = await store.get("HTTPRoute", "default", name)
            except NotFoundError:
                await store.create(route(name, spec={"i": i}))
            else:
                if i % 3 == 0:
                    await store.delete("HTTPRoute", "default", name)
                else:
                    await store.update({**current, "spec": {"i": i}})
            if i == 15:
                halfway.set()
            await asyncio.sleep(0)  # the memory store never suspends by itself

    task = asyncio.create_task(writer())
    await halfway.wait()
    items, revision = await store.list(kind="HTTPRoute")
    state = {o["metadata"]["name"]: o for o in items}
    seen: list[int] = []
    async with contextlib.aclosing(store.watch(kind="HTTPRoute", since_revision=revision)) as events:
        await task
        _, final = await store.list()
        async with asyncio.timeout(5):
            while (seen[-1] if seen else revision) < final:
                event = await anext(events)
                seen.append(event.revision)
                if event.type == "DELETED":
                    del state[event.object["metadata"]["name"]]
                else:
                    state[event.object["metadata"]["name"]] = event.object
    assert final > revision > 0
    assert seen == list(range(revision + 1, final + 1)), "gap or duplicate between list and watch"
    expected, _ = await store.list(kind="HTTPRoute")
    assert state == {o["metadata"]["name"]: o for o in expected}


async def test_watch_from_a_compacted_revision_expires(open_backend: Opener) -> None:
    store = await open_backend(changes_retained=3)
    for i in range(6):
        await store.create(route(f"r{i}"))
    with pytest.raises(ExpiredError):
        await anext(store.watch(since_revision=2))
    async with contextlib.aclosing(store.watch(since_revision=3)) as events:
        assert [e.revision for e in await take(events, 3)] == [4, 5, 6]
    # Re-list and watch from there: the caller's recovery.
    _, revision = await store.list()
    async with contextlib.aclosing(store.watch(since_revision=revision)) as events:
        await store.create(route("next"))
        assert [e.revision for e in await take(events, 1)] == [7]


async def test_watch_ends_when_the_store_closes(open_backend: Opener) -> None:
    store = await open_backend()
    events = store.watch(since_revision=0)
    waiting = asyncio.ensure_future(anext(events))
    await asyncio.sleep(0.05)
    await store.close()
    with pytest.raises(StopAsyncIteration):
        async with asyncio.timeout(5):
            await waiting


# -- concurrency --------------------------------------------------------------------------------------


async def test_concurrent_read_modify_write_loses_no_update(store: ResourceStore) -> None:
    await store.create(route("counter", spec={"count": 0}))
    conflicts = 0

    async def increment(times: int) -> None:
        nonlocal conflicts
        for _ in range(times):
            for _attempt in range(1000):
                current = await store.get("HTTPRoute", "default", "counter")
                await asyncio.sleep(0)  # let the others read the same version
                current["spec"]["count"] += 1
                try:
                    await store.update(current)
                    break
                except ConflictError:
                    conflicts += 1
            else:
                raise AssertionError("no progress after 1000 attempts")

    await asyncio.gather(*(increment(5) for _ in range(20)))
    final = await store.get("HTTPRoute", "default", "counter")
    assert final["spec"]["count"] == 100
    assert final["metadata"]["generation"] == 101
    assert final["metadata"]["resourceVersion"] == "101"
    assert conflicts > 0, "the test did not exercise a conflict"
