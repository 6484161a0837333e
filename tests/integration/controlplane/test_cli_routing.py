"""Issue 8 through the real CLI and a real control plane: route status as Gateway API reports
it, `get -o yaml|json | apply -f -` for every kind, every accepted route apiVersion kept as
written, and nothing stored-but-not-enforced accepted silently (warnings, `--strict`, the
ACCEPTED / REASON columns, `describe`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from tests.support.cli import tulle
from tests.support.controlplane import auth, eventually, running_control_plane

from tulle.api import kinds, load_path
from tulle.api.conditions import summary
from tulle.api.gateway.common import CONTROLLER_NAME

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = str(ROOT / "examples/resources")


def service(name: str) -> dict[str, Any]:
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"selector": {"app": name},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


def http_route(name: str, api_version: str, backend: str = "web") -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"parentRefs": [{"group": "core", "kind": "Service", "name": "web", "port": 80}],
                     "rules": [{"backendRefs": [{"name": backend, "port": 80}]}]}}


def docs(*objs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(list(objs), sort_keys=False)


async def get_json(api: str, type_: str, name: str = "", namespace: str = "shop") -> Any:
    """The REST API's answer (what `tulle get -o json` prints), without a CLI process per poll."""
    path = f"/api/v1/resources/{type_}" + (f"/{name}" if name else "")
    async with aiohttp.ClientSession(headers=auth(api)) as s, \
            s.get(api + path, params={"namespace": namespace}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def test_get_output_applies_back_unchanged_for_every_kind() -> None:
    async with running_control_plane() as cp:
        api = cp.api_url
        code, _, err = await tulle(api, "apply", "-f", EXAMPLES)
        assert code == 0, err

        async def settled() -> bool:  # every status the control plane writes is written
            route = await get_json(api, "httproute", "reviews-canary")
            policy = await get_json(api, "timeoutpolicy", "reviews-timeouts")
            mesh = await get_json(api, "mesh", "default", "")
            svcs = await get_json(api, "svc")
            return bool(route.get("status", {}).get("parents") and policy.get("status")
                        and mesh.get("status")
                        and all(s.get("status", {}).get("virtualIP") for s in svcs["items"]))

        await eventually(settled)
        route = await get_json(api, "httproute", "reviews-canary")
        (parent,) = route["status"]["parents"]
        assert parent["parentRef"]["name"] == "reviews" and parent["parentRef"]["port"] == 9080
        assert parent["controllerName"] == CONTROLLER_NAME
        assert {c["type"] for c in parent["conditions"]} >= {"Accepted", "ResolvedRefs"}
        assert all(c["lastTransitionTime"] and c["observedGeneration"] == 1
                   for c in parent["conditions"])

        applied = 0
        for info in kinds():
            code, out, err = await tulle(api, "get", info.plural, "-A", "-o", "yaml")
            assert code == 0, err
            listed = yaml.safe_load(out)
            assert listed["kind"] == "List" and listed["apiVersion"] == "v1"
            if not listed["items"]:
                continue
            code, again, err = await tulle(api, "apply", "-f", "-", stdin=out)
            assert code == 0, f"{info.kind}: {err}"
            lines = again.strip().splitlines()
            assert len(lines) == len(listed["items"])
            assert all(line.endswith(" unchanged") for line in lines), again
            applied += len(lines)
        assert applied == len(load_path(EXAMPLES).documents)  # every example document came back

        # one object, as JSON, status and server-managed metadata included
        code, out, _ = await tulle(api, "get", "httproute", "reviews-canary", "-n", "shop", "-o", "json")
        assert "status" in json.loads(out)
        code, again, err = await tulle(api, "apply", "-f", "-", stdin=out)
        assert code == 0, err
        assert again.strip() == "httproute/reviews-canary -n shop unchanged"

        # an edit to the output applies; a stale copy (resourceVersion moved on) does not
        edited = json.loads(out)
        edited["metadata"]["labels"] = {"team": "reviews"}
        code, again, err = await tulle(api, "apply", "-f", "-", stdin=json.dumps(edited))
        assert code == 0, err
        assert "configured" in again
        code, _, err = await tulle(api, "apply", "-f", "-", stdin=out)
        assert code == 1 and "resourceVersion" in err


async def test_every_accepted_route_version_is_stored_and_served_as_written() -> None:
    versions = ["gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1",
                "policy.linkerd.io/v1beta3", "policy.linkerd.io/v1beta2"]
    routes = [http_route(f"r{i}", v) for i, v in enumerate(versions)]
    grpc = {"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "GRPCRoute",
            "metadata": {"name": "g", "namespace": "shop"},
            "spec": {"parentRefs": [{"kind": "Service", "group": "", "name": "web", "port": 80}],
                     "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}
    async with running_control_plane() as cp:
        api = cp.api_url
        code, out, err = await tulle(api, "apply", "-f", "-", stdin=docs(service("web"), *routes, grpc))
        assert code == 0, err
        assert "Warning" not in err
        for i, v in enumerate(versions):
            assert (await get_json(api, "httproute", f"r{i}"))["apiVersion"] == v
        assert (await get_json(api, "grpcroute", "g"))["apiVersion"] == grpc["apiVersion"]

        async def all_accepted() -> bool:
            items = (await get_json(api, "httproutes"))["items"]
            return all(summary(r) == ("True", "Accepted") for r in items)

        await eventually(all_accepted)
        code, out, _ = await tulle(api, "get", "httproutes", "-n", "shop")
        rows = [line.split() for line in out.strip().splitlines()[1:]]
        assert len(rows) == 4 and all(r[3:5] == ["True", "Accepted"] for r in rows), out
        code, out, _ = await tulle(api, "get", "httproutes", "-n", "shop", "-o", "yaml")
        code, again, err = await tulle(api, "apply", "-f", "-", stdin=out)
        assert code == 0, err
        assert again.count("unchanged") == 4


async def test_what_is_stored_but_not_enforced_is_a_warning_a_column_and_a_condition() -> None:
    policy = {"apiVersion": "policy.tulle.dev/v1alpha1", "kind": "TimeoutPolicy",
              "metadata": {"name": "slow", "namespace": "shop"},
              "spec": {"targetRef": {"group": "", "kind": "Service", "name": "ghost"},
                       "requestTimeout": "5s"}}  # (a target that does not exist)
    async with running_control_plane() as cp:
        api = cp.api_url
        code, out, err = await tulle(api, "apply", "--strict", "-f", "-", stdin=docs(service("web")))
        assert code == 0 and "service/web -n shop created" in out, err  # clean input: strict is fine

        code, out, err = await tulle(api, "apply", "-f", "-",
                                     stdin=docs(policy, http_route("lost", "gateway.networking.k8s.io/v1",
                                                                   backend="nowhere")))
        assert code == 0, err
        assert "timeoutpolicy/slow -n shop created" in out
        assert "Warning: timeoutpolicy/slow -n shop: Accepted=False (TargetNotFound)" in err
        assert ("Warning: httproute/lost -n shop: ResolvedRefs=False (BackendNotFound)" in err), err

        async def written() -> bool:
            pol = (await get_json(api, "timeoutpolicy", "slow")).get("status")
            return bool(pol and (await get_json(api, "httproute", "lost")).get("status"))

        await eventually(written)
        _, pol, _ = await tulle(api, "get", "timeoutpolicies", "-n", "shop")
        header, row = (line.split() for line in pol.strip().splitlines())
        assert header == ["NAMESPACE", "NAME", "TARGET", "ACCEPTED", "REASON", "AGE"]
        assert row[:5] == ["shop", "slow", "Service/ghost", "False", "TargetNotFound"]
        _, rt, _ = await tulle(api, "get", "httproutes", "-n", "shop")
        assert rt.strip().splitlines()[1].split()[:5] == ["shop", "lost", "web", "Partial", "BackendNotFound"]
        code, out, _ = await tulle(api, "describe", "httproute", "lost", "-n", "shop")
        assert "Service web:80: ResolvedRefs=False (BackendNotFound)" in out
        assert "Service web:80: Accepted=True (Accepted)" in out

        # --strict: the same kind of input is refused whole, nothing is stored
        stricter = {**policy, "metadata": {"name": "slower", "namespace": "shop"}}
        code, out, err = await tulle(api, "apply", "--strict", "-f", "-",
                                     stdin=docs(stricter, service("api")))
        assert code == 1
        assert "would be stored but not (wholly) enforced; nothing was applied" in err
        assert "Accepted=False (TargetNotFound)" in err
        code, _, err = await tulle(api, "get", "timeoutpolicy", "slower", "-n", "shop")
        assert code == 1 and "not found" in err
        code, _, err = await tulle(api, "get", "svc", "api", "-n", "shop")
        assert code == 1 and "not found" in err

        # a dry run reports the same warnings and writes nothing
        code, out, err = await tulle(api, "apply", "--dry-run", "-f", "-", stdin=docs(stricter))
        assert code == 0 and "(dry run)" in out and "Accepted=False (TargetNotFound)" in err
