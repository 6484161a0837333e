"""The kubectl-like CLI against a real control plane: apply (idempotent, all-or-nothing,
conflict-detecting), get, describe, delete, proxies, proxy-config."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner
from tests.support.cli import tulle
from tests.support.controlplane import (
    eventually,
    public_records,
    running_control_plane,
    subscribe,
)
from tests.support.proxy import free_port

from tulle.cli.resources import apply_cmd
from tulle.proxyconfig.stream import WorkloadInfo

ROOT = Path(__file__).resolve().parents[3]
def service(name: str, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop", **extra},
            "spec": {"selector": {"app": name},
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


async def test_apply_is_idempotent_and_get_describe_delete_work(tmp_path: Path) -> None:
    async with running_control_plane(f"sqlite:{tmp_path / 'cp.db'}") as cp:
        code, out, err = await tulle(cp.api_url, "apply", "-f", str(ROOT / "examples/resources"))
        assert code == 0, err
        assert "service/reviews -n shop created" in out
        assert "httproute/" in out
        code, again, err = await tulle(cp.api_url, "apply", "-f",
                                       str(ROOT / "examples/resources"))
        assert code == 0, err
        assert "created" not in again and "configured" not in again
        assert again.count("unchanged") == out.count("created")

        code, out, _ = await tulle(cp.api_url, "get", "services", "-n", "shop")
        assert code == 0
        assert "reviews" in out and "VIRTUAL-IP" in out
        await eventually(lambda: _has_vip(cp.api_url))
        code, out, _ = await tulle(cp.api_url, "get", "svc", "reviews", "-n", "shop", "-o", "json")
        obj = json.loads(out)
        assert obj["status"]["virtualIP"].startswith("240.240.")

        code, out, _ = await tulle(cp.api_url, "describe", "httproute", "reviews-canary",
                                   "-n", "shop")
        assert code == 0, out
        assert "Accepted=True" in out

        code, out, _ = await tulle(cp.api_url, "delete", "svc", "reviews-v2", "-n", "shop")
        assert code == 0 and "deleted" in out
        code, _, err = await tulle(cp.api_url, "get", "svc", "reviews-v2", "-n", "shop")
        assert code == 1 and "not found" in err
        # The canary route now points at a missing Service: its status says so.
        async def refs_unresolved() -> bool:
            return await _condition(cp.api_url, "ResolvedRefs") == "False"

        await eventually(refs_unresolved)


async def _has_vip(api: str) -> bool:
    code, out, _ = await tulle(api, "get", "svc", "reviews", "-n", "shop", "-o", "json")
    return code == 0 and bool(json.loads(out).get("status", {}).get("virtualIP"))


async def _condition(api: str, type_: str) -> str:
    _, out, _ = await tulle(api, "get", "httproute", "reviews-canary", "-n", "shop", "-o", "json")
    for parent in json.loads(out).get("status", {}).get("parents", []):
        for c in parent["conditions"]:
            if c["type"] == type_:
                return str(c["status"])
    return "?"


async def test_an_invalid_file_is_rejected_whole_with_field_paths(tmp_path: Path) -> None:
    bad = service("web")
    bad["spec"]["ports"][0]["port"] = 70000
    broken_route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                    "metadata": {"name": "r", "namespace": "shop"},
                    "spec": {"parentRefs": [{"kind": "Service", "name": "web"}],
                             "rules": [{"matches": [{"path": {"type": "PathPrefix",
                                                              "value": "nope"}}]}]}}
    f = tmp_path / "mixed.yaml"
    f.write_text(yaml.safe_dump_all([service("good"), bad, broken_route]))
    async with running_control_plane() as cp:
        code, out, err = await tulle(cp.api_url, "apply", "-f", str(f))
        assert code == 1
        assert "nothing was applied" in err
        assert f"{f}, document 1 (Service shop/web): spec.ports[0].port:" in err
        assert f"{f}, document 2 (HTTPRoute shop/r): spec.rules[0].matches[0].path.value:" in err
        code, _, err = await tulle(cp.api_url, "get", "svc", "good", "-n", "shop")
        assert code == 1 and "not found" in err  # the valid document was not applied either


async def test_a_concurrent_edit_is_detected_not_overwritten(tmp_path: Path) -> None:
    async with running_control_plane() as cp:
        code, _, err = await tulle(cp.api_url, "apply", "-f", "-",
                                   stdin=yaml.safe_dump(service("web")))
        assert code == 0, err
        _, out, _ = await tulle(cp.api_url, "get", "svc", "web", "-n", "shop", "-o", "yaml")
        mine = yaml.safe_load(out)  # what I am editing, with its resourceVersion
        theirs = service("web", labels={"team": "them"})
        code, _, err = await tulle(cp.api_url, "apply", "-f", "-", stdin=yaml.safe_dump(theirs))
        assert code == 0, err
        mine["metadata"]["labels"] = {"team": "me"}
        code, _, err = await tulle(cp.api_url, "apply", "-f", "-", stdin=yaml.safe_dump(mine))
        assert code == 1
        assert "metadata.resourceVersion: the object was changed" in err
        _, out, _ = await tulle(cp.api_url, "get", "svc", "web", "-n", "shop", "-o", "json")
        assert json.loads(out)["metadata"]["labels"] == {"team": "them"}


async def test_get_proxies_and_proxy_config(tmp_path: Path) -> None:
    out_port = free_port()
    async with running_control_plane() as cp:
        docs = [service("api"), {
            "apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": "api-0", "namespace": "shop", "labels": {"app": "api"}},
            "spec": {"address": "127.0.0.1", "outboundPort": out_port,
                     "ports": [{"name": "http", "port": free_port(), "targetPort": 9}]}}]
        code, _, err = await tulle(cp.api_url, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs))
        assert code == 0, err
        proxy = await subscribe([cp.stream_port], WorkloadInfo(name="api-0", namespace="shop"))
        try:
            async def acked() -> bool:
                _, out, _ = await tulle(cp.api_url, "get", "proxies", "-o", "json")
                items = json.loads(out)["items"]
                return any(p["name"] == "api-0" and p["connected"]
                           and p["ackedVersion"] == p["desiredVersion"] for p in items)

            await eventually(acked, timeout=10)
            code, out, _ = await tulle(cp.api_url, "get", "proxies")
            assert code == 0 and "api-0" in out and "yes" in out
            code, out, _ = await tulle(cp.api_url, "proxy-config", "api-0", "-n", "shop",
                                       "listeners")
            assert code == 0
            assert f"127.0.0.1:{out_port}" in out and "inbound" in out
            code, out, _ = await tulle(cp.api_url, "proxy-config", "api-0", "-n", "shop",
                                       "endpoints")
            assert "outbound|80||api.shop" in out

            # Move the outbound listener to a port that is taken: the proxy NACKs, keeps its
            # config, and proxy-config shows what it runs, not what was asked.
            blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
            taken = blocker.sockets[0].getsockname()[1]
            try:
                docs[1]["spec"]["outboundPort"] = taken
                code, _, err = await tulle(cp.api_url, "apply", "-f", "-",
                                           stdin=yaml.safe_dump(docs[1]))
                assert code == 0, err

                async def nacked() -> bool:
                    _, out, _ = await tulle(cp.api_url, "get", "proxies", "-o", "json")
                    p = next(p for p in json.loads(out)["items"] if p["name"] == "api-0")
                    return bool(p["lastNack"]) and p["lastNack"]["version"] == p["desiredVersion"]

                await eventually(nacked, timeout=10)
                code, out, _ = await tulle(cp.api_url, "get", "proxies")
                assert "cannot bind" in out  # the NACK of the desired version stands
                code, wide, _ = await tulle(cp.api_url, "get", "proxies", "-o", "wide")
                assert wide.splitlines()[0].split()[-5:] == ["PEER", "SINCE", "CONTROL-PLANE",
                                                             "PUSHES", "FEATURES"]
                code, out, _ = await tulle(cp.api_url, "proxy-config", "api-0", "-n", "shop",
                                           "listeners")
                assert out.startswith("# shop/api-0: running (acked) ")
                assert f"127.0.0.1:{out_port}" in out and f"127.0.0.1:{taken}" not in out
                # NAME.NAMESPACE as istioctl takes it; `all` as tables, one per section.
                code, out, _ = await tulle(cp.api_url, "proxy-config", "api-0.shop")
                assert code == 0 and "admin 127.0.0.1:15000" in out.splitlines()[0]
                assert [line for line in out.splitlines() if line.endswith(":")
                        and line.isupper()] == ["LISTENERS:", "ROUTES:", "CLUSTERS:",
                                                "ENDPOINTS:"]
                assert "outbound|80||api.shop" in out
            finally:
                blocker.close()
        finally:
            await proxy.stop()


async def test_apply_refuses_a_yaml_alias_bomb_at_once(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("apiVersion: mesh.tulle.dev/v1alpha1\nkind: Service\nmetadata: {name: x}\n"
                    "spec:\n" + "".join(f"  {line}\n" for line in lines))
    async with running_control_plane() as cp:
        assert cp.store is not None
        code, _, err = await tulle(cp.api_url, "apply", "-f", str(bomb))  # the real process
        assert code == 1
        assert f"error: {bomb}: invalid YAML at line 11: the input expands to more than" in err
        # The refusal itself, timed without the process start-up (~0.2 s idle, more when busy).
        start = time.perf_counter()
        result = CliRunner().invoke(apply_cmd, ["-f", str(bomb), "--server", cp.api_url])
        took = time.perf_counter() - start
        assert result.exit_code == 1 and "the input expands to more than" in result.output
        assert took < 1.0, f"took {took:.2f}s"
        # nothing reached the control plane: its store holds only its CA and admin API token
        assert await public_records(cp.store) == []


async def test_apply_refuses_two_copies_of_one_document(tmp_path: Path) -> None:
    f = tmp_path / "twice.yaml"
    f.write_text(yaml.safe_dump_all([service("a"), service("b"), service("a")]))
    async with running_control_plane() as cp:
        assert cp.store is not None
        code, _, err = await tulle(cp.api_url, "apply", "-f", str(f))
        assert code == 1
        assert "duplicate documents: nothing was applied" in err
        assert (f"{f}, document 2 (Service shop/a): metadata.name: document 2 and document 0 "
                "are the same") in err
        assert (await cp.store.list("Service"))[0] == []
