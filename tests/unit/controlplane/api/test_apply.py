"""POST /api/v1/apply is all or nothing: duplicates, stale versions and a write that races the
apply each refuse the whole request, naming the document and the field; nothing is stored."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from typing import Any

from tests.support.controlplane import apply, running_control_plane
from tests.support.resources import service

from tulle.controlplane.api.apply import MAX_DOCUMENTS, apply_documents
from tulle.controlplane.store import BatchOp, Obj, ResourceStore
from tulle.controlplane.store.memory import MemoryStore

NS = "shop"


async def names(store: ResourceStore) -> list[str]:
    items, _ = await store.list("Service", NS)
    return [o["metadata"]["name"] for o in items]


async def test_a_document_given_twice_refuses_the_whole_apply() -> None:
    async with running_control_plane() as cp:
        assert cp.store is not None
        status, body = await apply(cp.api_url, service("a"), service("b"), service("c"),
                                   service("a", app="other"))
        assert status == 422, body
        assert "duplicate" in body["error"] and "nothing was applied" in body["error"]
        (detail,) = body["details"]
        assert detail["document"] == 3 and detail["name"] == "a"
        (err,) = detail["errors"]
        assert err["path"] == "metadata.name"
        assert "document 3 and document 0 are the same object" in err["message"]
        assert await names(cp.store) == []
        # The same documents without the copy apply whole.
        status, body = await apply(cp.api_url, service("a"), service("b"), service("c"))
        assert status == 200, body
        assert await names(cp.store) == ["a", "b", "c"]


async def test_a_stale_resource_version_in_the_middle_refuses_the_whole_apply() -> None:
    async with running_control_plane() as cp:
        assert cp.store is not None
        status, body = await apply(cp.api_url, service("b"))
        assert status == 200
        stale = service("b", app="edited")
        stale["metadata"]["resourceVersion"] = "999"
        status, body = await apply(cp.api_url, service("a"), stale, service("c"))
        assert status == 409, body
        (detail,) = body["details"]
        assert detail["document"] == 1
        assert detail["errors"][0]["path"] == "metadata.resourceVersion"
        assert await names(cp.store) == ["b"]


class RacingStore(MemoryStore):
    """A store where another writer edits `victim` after the apply read it, just before the
    apply's batch: what two concurrent `tulle apply`s do."""

    def __init__(self, victim: str) -> None:
        super().__init__()
        self.victim = victim

    async def batch(self, ops: Sequence[BatchOp]) -> list[Obj]:
        current = await self.get("Service", NS, self.victim)
        await self.update({**copy.deepcopy(current), "spec": {**current["spec"],
                                                               "selector": {"app": "theirs"}}})
        return await super().batch(ops)


async def test_a_write_racing_the_apply_refuses_it_whole_naming_the_document() -> None:
    store = RacingStore("b")
    await store.create(service("b"))
    docs: list[Any] = [service("a"), service("b", app="mine"), service("c")]
    response = await apply_documents(store, docs, ["f.yaml#0", "f.yaml#1", "f.yaml#2"], False)
    assert response.status_code == 409
    body = json.loads(bytes(response.body))
    (detail,) = body["details"]
    assert (detail["document"], detail["source"]) == (1, "f.yaml#1")
    assert detail["errors"][0]["path"] == "metadata.resourceVersion"
    assert "changed during this apply" in detail["errors"][0]["message"]
    assert await names(store) == ["b"]
    assert (await store.get("Service", NS, "b"))["spec"]["selector"] == {"app": "theirs"}


async def test_too_many_documents_are_refused_before_any_is_read() -> None:
    store = MemoryStore()
    response = await apply_documents(store, [{}] * (MAX_DOCUMENTS + 1), [], False)
    assert response.status_code == 413
    assert await store.list() == ([], 0)


async def test_an_apply_is_one_batch_with_consecutive_revisions() -> None:
    async with running_control_plane() as cp:
        status, body = await apply(cp.api_url, *(service(f"s{i}") for i in range(20)))
        assert status == 200, body
        versions = [int(r["resourceVersion"]) for r in body["results"]]
        assert versions == list(range(versions[0], versions[0] + 20))


async def test_a_large_reapply_reads_current_objects_by_list_and_sees_each_change() -> None:
    async with running_control_plane() as cp:
        many = [service(f"s{i}") for i in range(20)]  # >= LIST_FROM of one kind/namespace
        status, _ = await apply(cp.api_url, *many, service("s0", ns="elsewhere"))
        assert status == 200
        many[3] = service("s3", app="changed")
        status, body = await apply(cp.api_url, *many, service("s20"),
                                   service("s0", ns="elsewhere", app="changed"))
        assert status == 200, body
        results = {(r["namespace"], r["name"]): r["result"] for r in body["results"]}
        assert results.pop((NS, "s3")) == "configured"
        assert results.pop((NS, "s20")) == "created"
        assert results.pop(("elsewhere", "s0")) == "configured"
        assert set(results.values()) == {"unchanged"}
