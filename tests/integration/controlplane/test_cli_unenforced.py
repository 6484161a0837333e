"""Issue 8, item 8, through the real CLI and a real control plane: the Mesh's settings outside
`defaults` and every TCPRoute are stored but not enforced, so `apply` warns, `--strict` refuses,
`get` shows it in ACCEPTED / REASON and `describe` lists the condition."""

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


def tcp_route(name: str, parent: str) -> dict[str, Any]:
    return {"apiVersion": "gateway.networking.k8s.io/v1alpha2", "kind": "TCPRoute",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80},
                                    {"group": "", "kind": "Service", "name": parent}],
                     "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}


def docs(*objs: dict[str, Any]) -> str:
    return yaml.safe_dump_all(list(objs), sort_keys=False)


async def test_mesh_settings_not_in_force_are_a_warning_a_column_and_a_condition() -> None:
    async with running_control_plane() as cp:
        api = cp.api_url
        # --strict refuses the Mesh whole: nothing is stored
        code, _, err = await tulle(api, "apply", "--strict", "-f", "-", stdin=docs(MESH))
        assert code == 1 and "nothing was applied" in err, err
        assert "SettingsApplied=False (UnsupportedValue)" in err
        code, _, err = await tulle(api, "get", "mesh", "default")
        assert code == 1 and "not found" in err

        code, out, err = await tulle(api, "apply", "-f", "-", stdin=docs(MESH))
        assert code == 0 and "mesh/default created" in out, (out, err)
        warning = next(line for line in err.splitlines() if "SettingsApplied" in line)
        assert warning.startswith("Warning: mesh/default: SettingsApplied=False (UnsupportedValue)")
        # trust domain and mTLS mode are in force (ADR 0033); the outbound policy is not
        assert "in force: trustDomain example.org, mtls.mode STRICT" in warning, warning
        assert "spec.outboundTrafficPolicy.mode REGISTRY_ONLY" in warning, warning
        assert "spec.mtls.mode" not in warning and "spec.trustDomain" not in warning, warning

        async def written() -> bool:
            conds = ((await get_json(api, "mesh", "default", "")).get("status") or {}).get(
                "conditions") or []
            return any(c["type"] == "SettingsApplied" for c in conds)

        await eventually(written)
        code, out, _ = await tulle(api, "get", "mesh")
        header, row = (line.split() for line in out.strip().splitlines())
        cols = dict(zip(header, row, strict=False))
        assert (cols["NAME"], cols["ACCEPTED"], cols["REASON"]) == (
            "default", "Partial", "UnsupportedValue"), out
        code, out, _ = await tulle(api, "describe", "mesh", "default")
        assert code == 0
        assert "SettingsApplied=False (UnsupportedValue)" in out and "mtls.mode STRICT" in out

        # every mTLS mode is in force, DISABLED as well
        disabled = {**MESH, "spec": {**MESH["spec"], "mtls": {"mode": "DISABLED"}}}
        code, out, err = await tulle(api, "apply", "-f", "-", stdin=docs(disabled))
        assert code == 0, err
        assert "mtls.mode DISABLED" in err and "spec.mtls.mode" not in err


async def test_tcproute_is_a_warning_per_parent_a_column_and_a_condition() -> None:
    async with running_control_plane() as cp:
        api = cp.api_url
        code, _, err = await tulle(api, "apply", "-f", "-", stdin=docs(service("web")))
        assert code == 0, err
        code, _, err = await tulle(api, "apply", "--strict", "-f", "-",
                                   stdin=docs(tcp_route("strict", "web")))
        assert code == 1 and "nothing was applied" in err and "Accepted=False (UnsupportedValue)" in err
        code, _, err = await tulle(api, "get", "tcproute", "strict", "-n", "shop")
        assert code == 1 and "not found" in err

        code, out, err = await tulle(api, "apply", "-f", "-", stdin=docs(tcp_route("db", "gone")))
        assert code == 0 and "tcproute/db -n shop created" in out, (out, err)
        lines = [line for line in err.splitlines() if line.startswith("Warning: tcproute/db")]
        assert any(line.startswith("Warning: tcproute/db -n shop: Service web:80: "
                                   "Accepted=False (UnsupportedValue): TCPRoute is validated and "
                                   "stored, but not enforced") for line in lines), lines
        assert any("Service gone: Accepted=False (NoMatchingParent): parent Service shop/gone "
                   "does not exist" in line for line in lines), lines

        async def written() -> bool:
            return len((await get_json(api, "tcproute", "db")).get("status", {}).get(
                "parents") or []) == 2

        await eventually(written)
        route = await get_json(api, "tcproute", "db")
        by_parent = {p["parentRef"]["name"]: {c["type"]: c for c in p["conditions"]}
                     for p in route["status"]["parents"]}
        assert by_parent["web"]["Accepted"]["reason"] == "UnsupportedValue"
        assert by_parent["gone"]["Accepted"]["reason"] == "NoMatchingParent"
        assert by_parent["web"]["ResolvedRefs"]["status"] == "True"
        _, out, _ = await tulle(api, "get", "tcproutes", "-n", "shop")
        assert out.strip().splitlines()[1].split()[:5] == ["shop", "db", "web,gone", "False",
                                                            "UnsupportedValue"]
        code, out, _ = await tulle(api, "describe", "tcproute", "db", "-n", "shop")
        assert code == 0
        assert "Service web:80: Accepted=False (UnsupportedValue)" in out
        assert "Service gone: Accepted=False (NoMatchingParent)" in out
