"""A control plane in a namespace of the testbed, and what the end-to-end mesh tests do around it.

    from tests.support.meshnet import TULLE, ENV, start_control_plane, token_file, wait_for

    cli_env = start_control_plane(cp, workdir, resources())   # runs it, applies the documents
    path = token_file(cp, workdir, "web-a", cli_env)          # a bootstrap token a proxy reads
    wait_for("web-a's sidecar", lambda: listening(pod, 15006), log)

Shared by tests/e2e/test_transparent_mesh.py, test_transparent_ipv6.py and test_node_agent.py,
which each started a control plane, waited on sockets and issued tokens the same way.  The
control plane runs in a pod namespace of its own (stream on 0.0.0.0:15680, API on its
loopback); the CLI runs there too, so nothing touches the host namespace.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tulle.net.netns import Namespace

PROXY_UID = 1337
SRC = str(Path(__file__).resolve().parents[2] / "src")
TULLE = [sys.executable, "-m", "tulle.cli.main"]
ENV = {**os.environ, "PYTHONPATH": SRC}
STREAM = 15680
API = 15681


def wait_for(what: str, ok: Callable[[], Any], log: Path | None = None,
             limit: float = 30.0) -> None:
    """Poll `ok` every 0.1 s for `limit` seconds; fail the test naming `what` (and the log's
    tail) when it never holds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if ok():
            return
        time.sleep(0.1)
    pytest.fail(f"{what} never happened" + (f":\n{log.read_text()[-4000:]}" if log else ""))


def listening(ns: Namespace, port: int, address: str | None = None) -> bool:
    """Something listens on TCP `port` in `ns` (on `address`, as `ss` writes it, if given)."""
    out = ns.run(["ss", "-Hltn", f"sport = :{port}"]).stdout
    return bool(out.strip()) if address is None else f"{address}:{port} " in out


def marking_route(service: str, port: int, namespace: str = "shop") -> dict[str, Any]:
    """An HTTPRoute of the Service's port that sets `x-route: <service>` on what it routes, so
    a test tells a request the Service's routes took from one that went around them (a
    pod-IP call)."""
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": service, "namespace": namespace},
            "spec": {"parentRefs": [{"kind": "Service", "name": service, "port": port}],
                     "rules": [{"filters": [{"type": "RequestHeaderModifier",
                                             "requestHeaderModifier": {"set": [
                                                 {"name": "x-route", "value": service}]}}],
                                "backendRefs": [{"name": service, "port": port}]}]}}


def start_control_plane(cp: Namespace, workdir: Path, docs: list[dict[str, Any]]) -> dict[str, str]:
    """`tulle control-plane run` (memory store) in `cp`, `docs` applied; returns the CLI's
    environment (the admin token's file)."""
    (workdir / "mesh.yaml").write_text(yaml.safe_dump_all(docs))
    admin = workdir / "admin-token"
    log = workdir / "cp.log"
    with log.open("wb") as out:
        cp.popen([*TULLE, "control-plane", "run", "--store", "memory", "--stream-address",
                  "0.0.0.0", "--stream-port", str(STREAM), "--api-port", str(API),
                  "--debounce-ms", "20", "--admin-token-file", str(admin)],
                 stdout=out, stderr=out, env=ENV)
    wait_for("the control plane's API", lambda: listening(cp, API), log)
    cli_env = {**ENV, "TULLE_TOKEN_FILE": str(admin)}
    cp.run([*TULLE, "apply", "-f", str(workdir / "mesh.yaml")], env=cli_env)
    return cli_env


def token_file(cp: Namespace, workdir: Path, name: str, cli_env: dict[str, str],
               namespace: str = "shop") -> Path:
    """A bootstrap token for workload `namespace/name`, in a file the proxy's uid can read
    (the workdir is the test's own)."""
    text = cp.run([*TULLE, "token", "issue", "--workload", name, "-n", namespace],
                  env=cli_env).stdout.strip().splitlines()[0]
    path = workdir / f"{name}.token"
    path.write_text(text)
    path.chmod(0o644)
    return path
