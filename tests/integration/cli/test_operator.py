"""The operator's first commands against a real control plane, with the real `tulle` as a
subprocess: `version`, `api-resources`, `check` (findings, hints, exit codes, an unreachable
control plane, a refused token, `--pre`), and a port clash that names the port, the holder and the flag."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path

from tests.support.cli import PYTHONPATH, TULLE, tulle
from tests.support.controlplane import apply, eventually, running_control_plane, subscribe
from tests.support.proxy import free_port

from tulle.proxyconfig.stream import WorkloadInfo

V1 = "mesh.tulle.dev/v1alpha1"
BROKEN_ROUTE = {
    "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
    "metadata": {"name": "to-nowhere", "namespace": "shop"},
    "spec": {"parentRefs": [{"group": "mesh.tulle.dev", "kind": "Service", "name": "api"}],
             "rules": [{"backendRefs": [{"name": "missing", "port": 80}]}]}}
SERVICE = {"apiVersion": V1, "kind": "Service", "metadata": {"name": "api", "namespace": "shop"},
           "spec": {"selector": {"app": "api"}, "ports": [{"name": "http", "port": 80}]}}


async def test_version_and_api_resources_ask_the_server(tmp_path: Path) -> None:
    async with running_control_plane(f"sqlite:{tmp_path / 'cp.db'}") as cp:
        code, out, err = await tulle(cp.api_url, "version", "-o", "json")
        assert code == 0, err
        doc = json.loads(out)
        assert doc["client"]["version"] == doc["server"]["version"]
        assert doc["server"]["store"] == "sqlite" and doc["server"]["url"] == cp.api_url
        code, out, _ = await tulle(cp.api_url, "api-resources")
        assert code == 0
        lines = out.splitlines()
        assert lines[0].split() == ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
        assert any(line.split()[:2] == ["services", "svc"] for line in lines)
        assert any(line.split()[0] == "httproutes" and line.split()[-1] == "HTTPRoute"
                   for line in lines)
        code, out, err = await tulle("http://127.0.0.1:9", "version", token=None)
        assert code == 1 and out.startswith("Client: tulle ") and "cannot reach" in err


async def test_check_names_what_is_not_in_force_and_whose_proxy_went(tmp_path: Path) -> None:
    async with running_control_plane(f"sqlite:{tmp_path / 'cp.db'}") as cp:
        code, out, err = await tulle(cp.api_url, "check")
        assert code == 0, err
        assert "no findings" in out and "store, resources, proxies, workloads" in out
        status, body = await apply(cp.api_url, SERVICE, BROKEN_ROUTE)
        assert status == 200, body
        info = WorkloadInfo(name="api-0", namespace="shop", address="127.0.0.1",
                            labels={"app": "api"},
                            ports=[{"name": "http", "port": free_port(), "targetPort": 1}])
        proxy = await subscribe([cp.stream_port], info)

        async def connected() -> bool:
            _, out, _ = await tulle(cp.api_url, "get", "wl", "api-0", "-n", "shop", "-o", "json")
            return '"Connected"' in out

        await eventually(connected, timeout=10)
        await proxy.stop()

        async def gone() -> bool:
            _, out, _ = await tulle(cp.api_url, "check", "-o", "json")
            return "ProxyGone" in out

        await eventually(gone, timeout=10)
        code, out, err = await tulle(cp.api_url, "check", "-o", "json")
        assert code == 0, err  # warnings only
        by_code = {f["code"]: f for f in json.loads(out)["findings"]}
        assert by_code["NotInForce"]["object"] == "HTTPRoute shop/to-nowhere"
        assert "BackendNotFound" in by_code["NotInForce"]["message"]
        assert by_code["NotInForce"]["hint"].startswith("`tulle describe httproute to-nowhere")
        assert by_code["ProxyGone"]["object"] == "Workload shop/api-0"
        code, out, _ = await tulle(cp.api_url, "check")
        assert "hint: `tulle describe httproute to-nowhere -n shop`" in out
        assert "0 error(s), 2 warning(s)" in out


async def test_check_fails_when_the_control_plane_cannot_be_reached() -> None:
    code, out, _ = await tulle("http://127.0.0.1:9", "check", "-o", "json", token=None)
    assert code == 1
    [f] = json.loads(out)["findings"]
    assert (f["severity"], f["code"]) == ("error", "Unreachable")
    assert "tulle control-plane run" in f["hint"]


async def test_check_says_unauthorized_when_the_control_plane_refuses_the_token(
        tmp_path: Path) -> None:
    async with running_control_plane(f"sqlite:{tmp_path / 'cp.db'}") as cp:
        code, out, err = await tulle(cp.api_url, "check", "-o", "json",
                                     token="tulle_0000000000000000_bogus")
        assert code == 1, err
        [f] = json.loads(out)["findings"]
        assert (f["severity"], f["code"], f["object"]) == ("error", "Unauthorized",
                                                           "control plane")
        assert f["message"] == "unauthorized: invalid or revoked token"
        assert "TULLE_TOKEN" in f["hint"] and "tulle api-token create" in f["hint"]
        assert "control-plane run" not in f["hint"]
        code, out, _ = await tulle(cp.api_url, "check", token="tulle_0000000000000000_bogus")
        assert code == 1
        assert "Unauthorized" in out and "Unreachable" not in out


async def test_check_pre_reports_a_taken_default_port() -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", 15053))
        except OSError:
            held_here = False  # someone else holds it: then it must be reported anyway
        else:
            s.listen()
            held_here = True
        code, out, err = await tulle("http://127.0.0.1:9", "check", "--pre", "-o", "json",
                                     token=None)
    assert code == 0, err
    doc = json.loads(out)
    assert "default ports" in doc["checked"] and "native modules" in doc["checked"]
    port = [f for f in doc["findings"] if f["code"] == "PortInUse" and f["object"] == "port 15053"]
    assert port, doc
    if held_here:
        assert f"by pid {os.getpid()}" in port[0]["message"]
    assert "--dns-port" in port[0]["message"]


async def _run(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        TULLE, *args, env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", **PYTHONPATH},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_a_port_in_use_is_one_line_naming_port_holder_and_flag(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, out = await _run("control-plane", "run", "--store", f"sqlite:{tmp_path}/c.db",
                               "--api-port", str(port), "--stream-port", "0")
        assert code == 1, out
        assert "Traceback" not in out
        assert f"the REST API 127.0.0.1:{port} is already in use by pid {os.getpid()}" in out
        assert "--api-port" in out
        code, out = await _run("proxy", "run", "--control-plane", "127.0.0.1:9", "--workload",
                               "w", "--admin-port", str(port), "--stream-plaintext")
        assert code == 1, out
        assert "Traceback" not in out
        assert f"the admin port 127.0.0.1:{port} is already in use" in out
        assert "--admin-port (0 disables it)" in out
