"""Apply's version-skew warnings (ADR 0125), over a real reconciler and compiler: a feature an
apply puts in use at a connected proxy of an older build that lacks it is a warning of the
document that does, naming the proxies (at most `MAX_NAMED`) and what they do instead; what
the apply does not put newly in use (a feature already in use there, a change that needs
nothing they lack) is no warning."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any, ClassVar

import pytest
from tests.integration.controlplane.test_version_skew import namespace_policy, sticky_route
from tests.support.resources import NS, permissive_mesh, route, service, workload

from tulle.controlplane.api import skew_warnings as skew_module
from tulle.controlplane.api.apply import apply_documents
from tulle.controlplane.api.apply_checks import ApplyChecks, Checks, mesh_checks
from tulle.controlplane.api.skew_warnings import (
    MAX_NAMED,
    MAX_TESTS,
    SPLIT_SECONDS,
    _Uses,
    older_proxies,
    skew_check,
    skew_warnings,
    stored_skew,
)
from tulle.controlplane.preview import MeshView
from tulle.controlplane.push.cache import ProxyStatus, SnapshotCache
from tulle.controlplane.reconcile import Reconciler
from tulle.controlplane.store.memory import MemoryStore
from tulle.proxyconfig.features import FEATURES, SUPPORTED, refused_by, withheld_from
from tulle.proxyconfig.model import ProxyConfig

WITHOUT = ("session-persistence", "authz-trust-domains", "network-authorization")


def older(name: str, lacks: Iterable[str] = WITHOUT, **fields: Any) -> ProxyStatus:
    """The status a connected proxy whose hello did not announce `lacks` has."""
    announced = [f for f in SUPPORTED if f not in set(lacks)]
    return ProxyStatus(NS, name, **{"connected": True, **fields},
                       withheld=withheld_from(announced), refused=refused_by(announced))


class Mesh:
    """A memory store, a running reconciler, and the proxies' statuses apply reads."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.rec = Reconciler(self.store, SnapshotCache(), debounce=0.01)
        self.statuses: list[ProxyStatus] = []
        self.renders = 0
        self.checks = ApplyChecks(self.capture)

    def capture(self) -> Checks:
        """The control plane's capture (`mesh_checks`), with the renders counted."""
        view = self.rec.view()

        def render(objs: list[Any], keys: Any) -> Any:
            self.renders += 1
            return view.snapshots(objs, keys)
        return Checks(preview=view.conditions,
                      skew=skew_check(older_proxies(self.statuses), render))

    async def apply(self, *docs: dict[str, Any], strict: bool = False) -> tuple[int, Any]:
        """Apply as the API does; wait until the reconciler saw what was written."""
        r = await apply_documents(self.store, list(docs), [], False, checks=self.checks,
                                  strict=strict)
        body = json.loads(bytes(r.body))
        for res in body.get("results", []):
            key = (res["kind"], res["namespace"] or "", res["name"])
            if "resourceVersion" in res:
                async with asyncio.timeout(5):  # (its status writes may move it on)
                    while int(self.rec._resources.get(key, {}).get("metadata", {})
                              .get("resourceVersion", 0)) < int(res["resourceVersion"]):
                        await asyncio.sleep(0.01)
        return r.status_code, body


@pytest.fixture
async def mesh() -> AsyncIterator[Mesh]:
    m = Mesh()
    m.rec.start()
    await m.rec.ready.wait()
    status, body = await m.apply(
        workload("web-0", 18001, 18002, 18003, app="web"),
        workload("api-0", 18004, 18005, 18006, app="api"),
        service("api", app="api"), permissive_mesh())
    assert status == 200, body
    try:
        yield m
    finally:
        m.checks.close()
        await m.rec.stop()


def warned(body: Any) -> dict[str, list[str]]:
    return {r["name"]: r["warnings"] for r in body["results"] if r.get("warnings")}


async def test_the_document_that_adds_a_withheld_use_is_warned_naming_proxies_and_effect(
        mesh: Mesh) -> None:
    mesh.statuses = [older("web-0"), older("api-0")]
    status, body = await mesh.apply(
        service("api2", app="api"), route("plain", ("/", "api2"), parent="api2"),
        sticky_route("cart", "/cart"))
    assert status == 200, body
    assert warned(body) == {"cart": [
        "session-persistence: not run by 2 connected proxies whose build lacks it "
        "(shop/api-0, shop/web-0): there, the filter entry is left out (the rule serves "
        "without it)"]}

    # A field, not an item: only the proxy whose config enforces the policy is named.
    status, body = await mesh.apply(namespace_policy())
    assert status == 200, body
    (line,) = [w for w in warned(body)["api-callers"] if w.startswith("authz-trust-domains")]
    assert line == ("authz-trust-domains: not run by 1 connected proxy whose build lacks it "
                    "(shop/api-0): there, its fields are left out (the proxy runs as its build "
                    "did without them)")


async def test_what_the_apply_does_not_add_is_no_warning(mesh: Mesh) -> None:
    mesh.statuses = [older("web-0")]
    # It reaches web-0 (a new route on api) and uses nothing web-0 lacks: one render.
    status, body = await mesh.apply(route("plain", ("/", "api")))
    assert status == 200 and warned(body) == {} and mesh.renders == 1, body
    status, body = await mesh.apply(sticky_route("cart", "/cart"))
    assert "cart" in warned(body), body
    # Already in use there: the same document again, a change beside it, and one more
    # sticky rule put nothing newly in use (`get proxies` and `tulle check` say it).
    status, body = await mesh.apply(sticky_route("cart", "/cart"))
    assert status == 200 and warned(body) == {}, body
    status, body = await mesh.apply(service("api2", app="api"), route("plain", ("/", "api2")))
    assert status == 200 and warned(body) == {}, body
    status, body = await mesh.apply(sticky_route("cart", "/cart", "/basket"))
    assert status == 200 and warned(body) == {}, body


async def test_strict_refuses_the_whole_apply_and_stores_nothing(mesh: Mesh) -> None:
    mesh.statuses = [older("web-0")]
    status, body = await mesh.apply(service("api2", app="api"), sticky_route("cart", "/cart"),
                                    strict=True)
    assert status == 422, body
    assert body["error"].endswith("nothing was applied (strict)")
    (doc,) = body["details"]
    assert doc["name"] == "cart"
    assert doc["errors"][0]["message"].startswith("session-persistence: not run by 1 ")
    for kind, name in (("Service", "api2"), ("HTTPRoute", "cart")):
        assert await mesh.store.list(kind, NS) is not None
        names = [o["metadata"]["name"] for o in (await mesh.store.list(kind, NS))[0]]
        assert name not in names


async def test_a_policy_a_proxy_would_refuse_whole_says_so(mesh: Mesh) -> None:
    """`network-authorization` is never withheld (a TCP port's policy stripped would admit
    everything): a proxy lacking it refuses the snapshot, which the warning says."""
    mesh.statuses = [older("db-0")]
    db = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
          "metadata": {"name": "db-0", "namespace": NS, "labels": {"app": "db"}},
          "spec": {"address": "127.0.0.1", "outboundPort": 18009,
                   "ports": [{"name": "tcp-db", "port": 18007, "targetPort": 18008,
                              "appProtocol": "tcp"}]}}
    svc = {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Service",
           "metadata": {"name": "db", "namespace": NS},
           "spec": {"selector": {"app": "db"},
                    "ports": [{"name": "tcp", "port": 5432, "targetPort": "tcp-db",
                               "appProtocol": "tcp"}]}}
    status, body = await mesh.apply(db, svc)
    assert status == 200 and warned(body) == {}, body
    policy = {"apiVersion": "policy.tulle.dev/v1alpha1", "kind": "AuthorizationPolicy",
              "metadata": {"name": "db-callers", "namespace": NS},
              "spec": {"targetRef": {"group": "", "kind": "Service", "name": "db"},
                       "action": "ALLOW", "rules": [{"from": [{"namespaces": [NS]}]}]}}
    status, body = await mesh.apply(policy)
    lines = warned(body)["db-callers"]
    assert ("network-authorization: not run by 1 connected proxy whose build lacks it "
            "(shop/db-0): there, the whole new config is refused (a NACK) and the last one "
            "kept running: no later change reaches it until it is upgraded or this use is "
            "removed") in lines, lines


async def test_at_most_max_named_proxies_are_named_and_the_rest_counted(mesh: Mesh) -> None:
    for i in range(MAX_NAMED + 2):
        status, body = await mesh.apply(workload(f"web-{i}", 18100 + 3 * i, 18101 + 3 * i,
                                                 18102 + 3 * i, app="web"))
        assert status == 200, body
    mesh.statuses = [older(f"web-{i}") for i in range(MAX_NAMED + 2)]
    status, body = await mesh.apply(sticky_route("cart", "/cart"))
    (line,) = warned(body)["cart"]
    assert line.startswith(f"session-persistence: not run by {MAX_NAMED + 2} connected "
                           "proxies whose build lacks it (shop/web-0, shop/web-1, shop/web-2, "
                           "shop/web-3, shop/web-4 and 2 more): "), line


async def test_of_many_changing_documents_only_the_one_adding_the_use_is_warned(
        mesh: Mesh) -> None:
    """Told apart by kind first, then in halves: the one route among seven, found in a
    bounded number of renders."""
    mesh.statuses = [older("web-0")]
    docs = [service(f"s{i}", app="api") for i in range(12)]
    docs += [route(f"r{i}", ("/", f"s{i}"), parent=f"s{i}") for i in range(6)]
    docs.insert(15, sticky_route("cart", "/cart"))
    status, body = await mesh.apply(*docs)
    assert status == 200 and list(warned(body)) == ["cart"], body
    assert mesh.renders <= 2 + MAX_TESTS


async def test_telling_documents_apart_stops_at_the_time_bound_warning_the_rest(
        mesh: Mesh) -> None:
    """`SPLIT_SECONDS` (ADR 0128): a render costs about a compilation of the mesh, so past
    the bound a group not yet told apart is warned whole, as past `MAX_TESTS`.  The clock
    here moves one second per render: the route is still found among the kinds, and its
    group of routes is warned whole once the bound is spent."""
    mesh.statuses = [older("web-0")]
    docs = [service(f"s{i}", app="api") for i in range(12)]
    docs += [route(f"r{i}", ("/", f"s{i}"), parent=f"s{i}") for i in range(6)]
    docs.insert(15, sticky_route("cart", "/cart"))
    status, body = await mesh.apply(*docs[:12])  # (the Services exist: the routes attach)
    assert status == 200, body
    objs = dict(enumerate(docs))
    view, proxies = mesh.rec.view(), older_proxies(mesh.statuses)
    now = [0.0]

    def render(objs: list[Any], keys: Any) -> Any:
        now[0] += 1.0
        return view.snapshots(objs, keys)

    found = skew_warnings(objs, range(len(docs)), proxies, render, clock=lambda: now[0])
    # With time to spare, only `cart` (15).
    (line,) = skew_warnings(objs, range(len(docs)), proxies, view.snapshots)[15]

    def untold(n: int) -> list[str]:
        return [f"{line} (one or more of {n} documents of this apply, this one among them, "
                "put it in use: the check's bound was reached before telling which)"]

    # 2 renders find the use (t=2, the bound runs to t=7), 2 tell the kinds apart, then the
    # 7 routes (12..18) are halved: [15..18] takes the use away (t=6), of its halves [15, 16]
    # does (t=7), and the bound is reached: each is warned saying it was not told apart, the
    # tighter group where one was found.
    assert found == {15: untold(2), 16: untold(2), 17: untold(4), 18: untold(4)}, found
    assert now[0] == 2 + SPLIT_SECONDS  # (the bound is checked before each render)


async def test_past_max_tests_each_line_says_its_document_was_not_told_apart(
        mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(skew_module, "MAX_TESTS", 2)  # (the kinds take both)
    mesh.statuses = [older("web-0")]
    docs = [service(f"s{i}", app="api") for i in range(12)]
    docs += [route(f"r{i}", ("/", f"s{i}"), parent=f"s{i}") for i in range(6)]
    docs.append(sticky_route("cart", "/cart"))
    status, body = await mesh.apply(*docs)
    assert status == 200, body
    lines = warned(body)
    assert sorted(lines) == ["cart", *(f"r{i}" for i in range(6))], lines
    assert all(len(ls) == 1 and ls[0].endswith(
        ": there, the filter entry is left out (the rule serves without it) (one or more of 7 "
        "documents of this apply, this one among them, put it in use: the check's bound was "
        "reached before telling which)") for ls in lines.values()), lines


async def test_documents_needed_together_are_each_warned(mesh: Mesh) -> None:
    """A new Service and the sticky route on it: without either there is no sticky rule, so
    the warning is on both (the Service's apply brings the route into force)."""
    mesh.statuses = [older("web-0")]
    sticky = sticky_route("cart", "/cart")
    sticky["spec"]["parentRefs"][0]["name"] = "api2"
    status, body = await mesh.apply(service("api2", app="api"), route("plain", ("/", "api")),
                                    sticky)
    assert status == 200 and sorted(warned(body)) == ["api2", "cart"], body


async def test_without_older_proxies_nothing_is_rendered(mesh: Mesh) -> None:
    mesh.statuses = [ProxyStatus(NS, "web-0", connected=True),  # this build: lacks nothing
                     older("api-0", connected=False)]  # gone: sent nothing
    status, body = await mesh.apply(sticky_route("cart", "/cart"))
    assert status == 200 and warned(body) == {} and mesh.renders == 0, body


def test_a_node_is_one_proxy_named_by_its_first_workload() -> None:
    node = ["shop/agent-a", "shop/pod-b"]
    found = older_proxies([older("agent-a", node=node), older("pod-b", node=node)])
    assert [p.name for p in found] == ["shop/agent-a (node of 2 workloads)"]
    assert found[0].keys == (("shop", "agent-a"), ("shop", "pod-b"))


def test_nothing_changed_or_no_one_older_costs_no_render() -> None:
    def render(*_: Any) -> Any:
        raise AssertionError("rendered")
    proxies = older_proxies([older("web-0")])
    assert skew_warnings({0: {}}, [], proxies, render) == {}
    assert skew_warnings({0: {}}, [0], [], render) == {}


def test_every_feature_is_read_from_a_section_of_the_snapshot() -> None:
    """Uses are counted per section of a snapshot (`_Uses`): a feature whose paths started
    anywhere else would be counted nowhere, and never warned of."""
    roots = _Uses(FEATURES)._roots
    assert all(r <= set(ProxyConfig.__struct_fields__) for r in roots.values()), roots
    assert roots["session-persistence"] == {"route_tables"}


async def test_two_documents_each_putting_a_feature_in_use_are_each_warned(mesh: Mesh) -> None:
    """Uses are counted per item while telling documents apart: two sticky routes of one
    apply are each found, though leaving either out still leaves the feature in use."""
    mesh.statuses = [older("web-0")]
    other = sticky_route("basket", "/basket")
    status, body = await mesh.apply(sticky_route("cart", "/cart"), route("plain", ("/", "api")),
                                    service("api2", app="api"), other)
    assert status == 200 and sorted(warned(body)) == ["basket", "cart"], body


# -- what a stored object puts in use (describe, ADR 0131) ------------------------------------


async def test_a_stored_object_is_told_what_it_puts_in_use_at_older_proxies(mesh: Mesh) -> None:
    status, body = await mesh.apply(route("plain", ("/", "api")), sticky_route("cart", "/cart"))
    assert status == 200, body
    # Applied before the older proxies connected: apply had no one to warn of.
    assert warned(body) == {}
    mesh.statuses = [older("web-0"), older("api-0", lacks=())]
    stored = mesh_checks(mesh.rec.view, lambda: mesh.statuses)().stored
    assert stored is not None
    assert stored(("HTTPRoute", NS, "cart")) == (1, [
        "session-persistence: not run by 1 connected proxy whose build lacks it (shop/web-0): "
        "there, the filter entry is left out (the rule serves without it)"])
    # Reaching the proxy is not putting a feature in use there.
    assert stored(("HTTPRoute", NS, "plain")) == (1, [])
    assert stored(("Workload", NS, "api-0")) == (1, [])
    # The sticky route's parent is told too: without the Service no rule of it is sent, and
    # what web-0 leaves out is this Service's traffic's stickiness.
    assert stored(("Service", NS, "api"))[1][0].startswith("session-persistence: not run")
    # A second sticky route: each is told, though either alone keeps the feature in use
    # (apply, which looks only at what is newly in use, warns of neither).
    status, body = await mesh.apply(sticky_route("basket", "/basket"))
    assert status == 200 and warned(body) == {}, body
    stored = mesh_checks(mesh.rec.view, lambda: mesh.statuses)().stored  # (the state of now)
    assert stored is not None
    for name in ("cart", "basket"):
        (line,) = stored(("HTTPRoute", NS, name))[1]
        assert line.startswith("session-persistence: not run by 1 "), line
    # Not in the reconciler's resources (never applied, or deleted): nothing to tell.
    assert stored(("HTTPRoute", NS, "nowhere")) == (1, [])


class CountingView(MeshView):
    """A view that counts its renders."""

    renders: ClassVar[list[int]] = []

    def snapshots(self, objs: list[Any], keys: Any) -> Any:
        self.renders.append(len(keys))
        return super().snapshots(objs, keys)


async def test_a_stored_object_costs_no_render_without_older_proxies(mesh: Mesh) -> None:
    status, body = await mesh.apply(route("plain", ("/", "api")))
    assert status == 200, body
    view = CountingView(mesh.rec.view().resources)
    CountingView.renders.clear()
    # A proxy that lacks nothing is no older proxy: nothing rendered, none counted.
    stored = mesh_checks(lambda: view, lambda: [older("web-0", lacks=())])().stored
    assert stored is not None and stored(("HTTPRoute", NS, "plain")) == (0, [])
    assert CountingView.renders == []

    def never(keys: Any) -> Any:
        raise AssertionError("rendered")
    assert stored_skew([], never, never) == []
    # One older proxy whose snapshot uses nothing it lacks: one render, not two.
    stored = mesh_checks(lambda: view, lambda: [older("api-0")])().stored
    assert stored is not None and stored(("HTTPRoute", NS, "plain")) == (1, [])
    assert CountingView.renders == [1]
