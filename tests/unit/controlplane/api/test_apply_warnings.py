"""Apply's warnings come from a dry compilation of the applied documents over the current
state; `strict` turns any of them into a refusal of the whole apply; `status` is ignored on
input, whatever it holds."""

from __future__ import annotations

import json
from typing import Any

from tests.support.resources import service

from tulle.controlplane.api.apply import apply_documents
from tulle.controlplane.api.apply_checks import ApplyChecks, Checks
from tulle.controlplane.store.memory import MemoryStore
from tulle.controlplane.store.protocol import Obj

NS = "shop"


def policy(name: str) -> dict[str, Any]:
    return {"apiVersion": "policy.tulle.dev/v1alpha1", "kind": "TimeoutPolicy",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"targetRef": {"group": "", "kind": "Service", "name": "a"},
                     "requestTimeout": "5s"}}


class Preview:
    """Stands in for `Reconciler.preview`: says a TimeoutPolicy is not enforced, per parent
    for a route; records what it was shown."""

    def __init__(self) -> None:
        self.seen: list[list[Obj]] = []

    def __call__(self, objs: list[Obj]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
        self.seen.append(objs)
        return {("TimeoutPolicy", NS, o["metadata"]["name"]): [
            {"type": "Accepted", "status": "False", "reason": "Unsupported", "message": "not yet"}]
            for o in objs if o["kind"] == "TimeoutPolicy"}


def checks(preview: Preview) -> ApplyChecks:
    return ApplyChecks(lambda: Checks(preview=preview))


async def body(response: Any) -> Any:
    return json.loads(response.body)


async def test_warnings_are_given_per_document_and_the_objects_stored() -> None:
    store, preview = MemoryStore(), Preview()
    response = await apply_documents(store, [service("a"), policy("p")], [], False, checks=checks(preview))
    assert response.status_code == 200
    results = (await body(response))["results"]
    assert "warnings" not in results[0]
    assert results[1]["warnings"] == ["Accepted=False (Unsupported): not yet"]
    assert [o["kind"] for o in preview.seen[0]] == ["Service", "TimeoutPolicy"]
    assert (await store.get("TimeoutPolicy", NS, "p"))["spec"]["requestTimeout"] == "5s"


async def test_strict_refuses_the_whole_apply_naming_each_warned_document() -> None:
    store = MemoryStore()
    response = await apply_documents(store, [service("a"), policy("p")], ["f.yaml#0", "f.yaml#1"],
                                     False, checks=checks(Preview()), strict=True)
    assert response.status_code == 422
    out = await body(response)
    assert "nothing was applied (strict)" in out["error"]
    (detail,) = out["details"]
    assert detail["document"] == 1 and detail["source"] == "f.yaml#1" and detail["kind"] == "TimeoutPolicy"
    assert detail["errors"] == [{"path": "status", "message": "Accepted=False (Unsupported): not yet"}]
    items, _ = await store.list()
    assert items == []
    # without anything to warn about, strict applies
    response = await apply_documents(store, [service("a")], [], False, checks=checks(Preview()), strict=True)
    assert response.status_code == 200


async def test_status_on_input_is_ignored_even_when_it_is_not_a_valid_status() -> None:
    store = MemoryStore()
    doc = {**service("a"), "status": {"conditions": "anything", "virtualIP": 7}}
    response = await apply_documents(store, [doc], [], False)
    assert response.status_code == 200, await body(response)
    assert "status" not in await store.get("Service", NS, "a")
