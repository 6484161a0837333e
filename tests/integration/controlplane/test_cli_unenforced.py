"""Through the real CLI and a real control plane: what of the Mesh's settings outside
`defaults` and of TCPRoutes the proxies run, and what they do not.  Issue 8 item 8 made each
setting and route not enforced a warning, a column and a condition; since transparent
listeners (issue 11, ADR 0044) every Mesh setting is in force, and a TCPRoute is enforced on
the Service it decides -- a consumer TCPRoute (another namespace's Service) still is not, and
says so the same way."""

from __future__ import annotations

from typing import Any

import yaml
from tests.integration.controlplane.test_cli_routing import get_json, service
from tests.support.cli import tulle
from tests.support.controlplane import eventually, running_control_plane

MESH: dict[str, Any] = {
    "apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh", "metadata": {"name": "default"},
    "spec": {"trustDomain": "example.org", "mtls": {"mode": "STRICT"},
             "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}}


def tcp_route(name: str, parent: str, namespace: str = "shop") -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80,
                                     "namespace": "shop"},
                                    {"group": "", "kind": "Service", "name": parent}],
                     "rules": [{"backendRefs": [{"name": "web", "port": 80,
                                                 "namespace": "shop"}]}]}}


def docs(*objs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(list(objs), sort_keys=False)


async def test_every_mesh_setting_is_in_force() -> None:
    async with running_control_plane() as cp:
        api = cp.api_url
        # (not --strict: `spec.defaults.retryBudget` is mesh_defaults' and not enforced yet)
        code, out, err = await tulle(api, "apply", "-f", "-", stdin=docs(MESH))
        assert code == 0 and "mesh/default created" in out, (out, err)
        assert "SettingsApplied" not in err, err

        async def written() -> list[dict[str, Any]]:
            conds = ((await get_json(api, "mesh", "default", "")).get("status") or {}).get(
                "conditions") or []
            return [c for c in conds if c["type"] == "SettingsApplied"]

        await eventually(written)
        cond = (await written())[0]
        assert cond["status"] == "True", cond
        assert "outboundTrafficPolicy.mode REGISTRY_ONLY" in cond["message"], cond
        assert "trustDomain example.org, mtls.mode STRICT" in cond["message"], cond


async def test_a_tcproute_is_accepted_on_its_service_and_a_consumer_one_for_its_namespace(
        ) -> None:
    async with running_control_plane() as cp:
        api = cp.api_url
        code, _, err = await tulle(api, "apply", "-f", "-", stdin=docs(service("web")))
        assert code == 0, err
        # A producer route on an existing port: enforced, so --strict takes it.
        code, out, err = await tulle(api, "apply", "--strict", "-f", "-",
                                     stdin=docs(one_parent(tcp_route("db", "gone"))))
        assert code == 0 and "tcproute/db -n shop created" in out, (out, err)

        # A consumer route (in `front`, on shop's Service) runs for front's clients; its
        # backend in shop needs shop's consent first, else --strict refuses it.
        mine = one_parent(tcp_route("mine", "gone", "front"))
        code, _, err = await tulle(api, "apply", "--strict", "-f", "-", stdin=docs(mine))
        assert code == 1 and "nothing was applied" in err
        assert "ResolvedRefs=False (RefNotPermitted)" in err, err
        grant = {"apiVersion": "gateway.networking.k8s.io/v1beta1", "kind": "ReferenceGrant",
                 "metadata": {"name": "front-tcp", "namespace": "shop"},
                 "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "TCPRoute",
                                    "namespace": "front"}],
                          "to": [{"group": "", "kind": "Service"}]}}
        code, out, err = await tulle(api, "apply", "--strict", "-f", "-",
                                     stdin=docs(grant, mine))
        assert code == 0 and "tcproute/mine -n front created" in out, (out, err)

        # A parent that does not exist is still a warning (and refused by --strict).
        code, out, err = await tulle(api, "apply", "-f", "-",
                                     stdin=docs(tcp_route("theirs", "gone", "front")))
        assert code == 0 and "tcproute/theirs -n front created" in out, (out, err)
        lines = [line for line in err.splitlines() if line.startswith("Warning: tcproute/theirs")]
        assert any("Service gone: Accepted=False (NoMatchingParent): parent Service front/gone "
                   "does not exist" in line for line in lines), lines

        async def written() -> bool:
            return len((await get_json(api, "tcproute", "theirs", "front")).get(
                "status", {}).get("parents") or []) == 2

        await eventually(written)
        route = await get_json(api, "tcproute", "db")
        accepted = {c["type"]: c for c in route["status"]["parents"][0]["conditions"]}
        assert accepted["Accepted"]["status"] == "True", accepted
        assert accepted["Accepted"]["reason"] == "Accepted"
        code, out, _ = await tulle(api, "describe", "tcproute", "mine", "-n", "front")
        assert code == 0
        assert "Accepted=True (Accepted): enforced for transparent clients in namespace front" \
            in out, out
        code, out, _ = await tulle(api, "describe", "tcproute", "theirs", "-n", "front")
        assert "Service gone: Accepted=False (NoMatchingParent)" in out
        # (`mine` is older: it decides web:80 for front's clients; `theirs` is Conflicted there)
        assert "Conflicted" in out, out


def one_parent(route: dict[str, Any]) -> dict[str, Any]:
    return {**route, "spec": {**route["spec"], "parentRefs": route["spec"]["parentRefs"][:1]}}
