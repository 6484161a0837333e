"""kubectl habits with the real `tulle` against a real control plane: several kinds in one
`get`, `get --watch`, `delete -f / -l / --all / --ignore-not-found`, disconnected proxies
hidden from `get proxies` unless `--all`, and the admin port a proxy really serves."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import yaml
from tests.support.cli import PYTHONPATH, TULLE, tulle
from tests.support.controlplane import admin_token, eventually, running_control_plane, subscribe
from tests.support.proxy import free_port

from tulle.proxyconfig.stream import WorkloadInfo

V1 = "mesh.tulle.dev/v1alpha1"


def svc(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "Service",
            "metadata": {"name": name, "namespace": "shop", "labels": labels},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80}]}}


ROUTE = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
         "metadata": {"name": "r", "namespace": "shop"},
         "spec": {"parentRefs": [{"group": "mesh.tulle.dev", "kind": "Service", "name": "a"}],
                  "rules": [{"backendRefs": [{"name": "a", "port": 80}]}]}}


async def test_get_several_kinds_and_delete_by_file_selector_and_all(tmp_path: Path) -> None:
    async with running_control_plane() as cp:
        f = tmp_path / "docs.yaml"
        f.write_text(yaml.safe_dump_all([svc("a", tier="front"), svc("b", tier="back"),
                                         svc("c", tier="back"), ROUTE]))
        code, out, err = await tulle(cp.api_url, "apply", "-f", str(f))
        assert code == 0, err
        assert "\x1b[" not in out  # no colour when stdout is not a terminal
        assert err.splitlines()[-1] == "4 objects: 4 created"
        code, out, err = await tulle(cp.api_url, "get", "svc,httproute", "-n", "shop")
        assert code == 0, err
        assert out.splitlines()[0] == "Service:" and "\nHTTPRoute:\n" in out
        code, out, _ = await tulle(cp.api_url, "get", "svc,httproute", "-n", "shop", "-o",
                                   "json")
        assert [i["kind"] for i in json.loads(out)["items"]] == ["Service"] * 3 + ["HTTPRoute"]

        code, out, err = await tulle(cp.api_url, "delete", "svc", "-l", "tier=back", "-n", "shop")
        assert code == 0, err
        assert sorted(out.split("\n")[:2]) == ["service/b deleted", "service/c deleted"]
        code, out, err = await tulle(cp.api_url, "delete", "-f", str(f), "--ignore-not-found")
        assert code == 0, err
        assert out.splitlines() == ["service/a deleted", "httproute/r deleted"]
        code, _, err = await tulle(cp.api_url, "delete", "-f", str(f))
        assert code == 1 and err.count("not found") == 4
        await tulle(cp.api_url, "apply", "-f", str(f))
        code, out, _ = await tulle(cp.api_url, "delete", "svc", "--all", "-n", "shop")
        assert code == 0 and out.count("deleted") == 3
        code, _, err = await tulle(cp.api_url, "delete", "svc", "x", "--all")
        assert code == 2 and "exactly one of" in err


async def test_get_watch_prints_changes_until_interrupted(tmp_path: Path) -> None:
    async with running_control_plane() as cp:
        await tulle(cp.api_url, "apply", "-f", "-", stdin=yaml.safe_dump(svc("a")))
        proc = await asyncio.create_subprocess_exec(
            TULLE, "get", "svc", "-n", "shop", "--watch",
            env={"TULLE_SERVER": cp.api_url, "TULLE_TOKEN": admin_token(cp.api_url),
                 "PATH": "/usr/bin:/bin", "HOME": "/nonexistent", **PYTHONPATH},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        lines: list[str] = []

        async def read() -> None:
            assert proc.stdout is not None
            while line := await proc.stdout.readline():
                lines.append(line.decode().rstrip())

        reader = asyncio.get_running_loop().create_task(read())
        try:
            await eventually(lambda: any(" a " in f" {x} " for x in lines[1:]), timeout=10)
            await tulle(cp.api_url, "apply", "-f", "-", stdin=yaml.safe_dump(svc("b")))
            await eventually(lambda: any(x.startswith("shop   b") or x.startswith("shop b")
                                         for x in lines[2:]), timeout=10)
            await tulle(cp.api_url, "delete", "svc", "a", "-n", "shop")
            await eventually(lambda: "DELETED   service/a -n shop" in lines, timeout=10)
        finally:
            proc.send_signal(signal.SIGINT)
            code = await asyncio.wait_for(proc.wait(), 10)
            reader.cancel()
        assert code == 0, lines
        err = await proc.stderr.read() if proc.stderr else b""
        assert b"Traceback" not in err


async def test_disconnected_proxies_are_hidden_and_the_admin_port_is_the_real_one() -> None:
    async with running_control_plane() as cp:
        admin = free_port()
        info = WorkloadInfo(name="api-0", namespace="shop", address="127.0.0.1",
                            admin_port=admin)
        proxy = await subscribe([cp.stream_port], info)

        async def acked() -> bool:
            _, out, _ = await tulle(cp.api_url, "get", "proxies", "-o", "json")
            return any(p["connected"] and p["ackedVersion"] == p["desiredVersion"]
                       for p in json.loads(out)["items"])

        await eventually(acked, timeout=10)
        code, out, _ = await tulle(cp.api_url, "proxy-config", "api-0.shop", "listeners")
        assert code == 0 and out.splitlines()[0].endswith(f"; admin 127.0.0.1:{admin}")
        await proxy.stop()

        async def gone() -> bool:
            _, out, _ = await tulle(cp.api_url, "get", "proxies", "-o", "json")
            return not json.loads(out)["items"]

        await eventually(gone, timeout=10)
        code, out, err = await tulle(cp.api_url, "get", "proxies")
        assert code == 0 and "api-0" not in out
        assert "1 disconnected proxy not shown: --all shows them" in err
        code, out, _ = await tulle(cp.api_url, "get", "proxies", "--all")
        assert "api-0" in out and " no " in f" {out} "


async def test_describe_service_shows_endpoints_routes_policies_and_proxies() -> None:
    timeout = {"apiVersion": "policy.tulle.dev/v1alpha1", "kind": "TimeoutPolicy",
               "metadata": {"name": "t", "namespace": "shop"},
               "spec": {"targetRef": {"group": "", "kind": "Service",
                                      "name": "a"}, "requestTimeout": "2s"}}
    consumer = {**ROUTE, "metadata": {"name": "mine", "namespace": "web"},
                "spec": {**ROUTE["spec"], "parentRefs": [
                    {"group": "mesh.tulle.dev", "kind": "Service", "name": "a",
                     "namespace": "shop", "port": 80}]}}
    async with running_control_plane() as cp:
        code, _, err = await tulle(cp.api_url, "apply", "-f", "-", stdin=yaml.safe_dump_all(
            [svc("a"), ROUTE, consumer, timeout]))
        assert code == 0, err
        info = WorkloadInfo(name="a-0", namespace="shop", address="127.0.0.1",
                            labels={"app": "a"},
                            ports=[{"name": "http", "port": free_port(), "targetPort": 1}])
        proxy = await subscribe([cp.stream_port], info)
        try:
            async def routed() -> bool:
                _, out, _ = await tulle(cp.api_url, "describe", "svc", "a", "-n", "shop")
                return "shop/a-0" in out.split("Proxies that route to it:")[-1]

            await eventually(routed, timeout=10)
            code, out, err = await tulle(cp.api_url, "describe", "svc", "a", "-n", "shop")
            assert code == 0, err
            ends = out.split("Endpoints:")[1].split("Routes:")[0]
            assert "a-0" in ends and "127.0.0.1" in ends and "connected" in ends
            routes = out.split("Routes:")[1].split("Policies:")[0]
            assert "httproute/r " in routes and "producer" in routes
            assert "httproute/mine" in routes and "consumer" in routes and " 80 " in routes
            assert "timeoutpolicy/t" in out.split("Policies:")[1]
            last = out.split("Proxies that route to it:")[1]
            assert "outbound|80||a.shop" in last
        finally:
            await proxy.stop()
