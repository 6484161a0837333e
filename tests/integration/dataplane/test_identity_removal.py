"""A node agent keeps no key of a pod it no longer fronts (ADR 0126).

ADR 0123 keeps every certificate a proxy holds, with its private key, in `--cache-dir`, so a
restart serves mTLS before the control plane answers.  A pod taken off a node (its agent
restarted with a `--node-config` without it: moved to another node, or deleted) left its key
on the node's disk for good.  Real `tulle control-plane run` and `tulle proxy run
--node-config --cache-dir` processes, mTLS STRICT, pods `pod-a` and `pod-b` on one agent: the
agent is restarted with pod-a alone, with the control plane up or down.  pod-b's identity file
goes at start, pod-a's stays and serves mTLS (from the cache while the control plane is down,
which before served nothing: the cached snapshot named pod-b's certificate); a symbolic link
planted under pod-b's name is neither followed nor deleted, and said.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tests.support.controlplane import (
    ControlPlaneProcess,
    apply,
    eventually,
    issue_token,
    named_origin,
)
from tests.support.node_agent import NodeAgentProcess
from tests.support.proxy import free_port
from tests.support.resources import service
from tests.support.subproc import nothing_listens

from tulle.proxyconfig.stream import WorkloadInfo

NS = "shop"
A_ID = "spiffe://cluster.local/ns/shop/sa/a"


def _workload(name: str, sa: str, outbound: int, port: int, target: int) -> dict[str, Any]:
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": name, "namespace": NS, "labels": {"app": sa}},
            "spec": {"address": "127.0.0.1", "outboundPort": outbound, "serviceAccount": sa,
                     "ports": [{"name": "http", "port": port, "targetPort": target}]}}


async def _answers(outbound: int, host: str, name: str) -> bool:
    """GET /x through a pod's outbound listener on the agent answers from Service `host`."""
    try:
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{outbound}/x", headers={"Host": host},
                timeout=aiohttp.ClientTimeout(total=5)) as r:
            return r.status == 200 and json.loads(await r.text())["name"] == name
    except (aiohttp.ClientError, TimeoutError):
        return False


@dataclass
class _Node:
    cp: ControlPlaneProcess
    agent: NodeAgentProcess
    pods: list[dict[str, Any]]
    """The node config's entries: pod-a, pod-b."""
    inbound: dict[str, int]
    outbound: dict[str, int]

    @property
    def ident(self) -> Path:
        return self.agent.cache / "identity"

    def file(self, pod: str) -> Path:
        return self.ident / f"{NS}.{pod}.json"

    async def restart_with_pod_a_alone(self) -> int:
        """Stop the agent, take pod-b off its node config, start it again; the log mark."""
        await self.agent.stop()
        self.agent.config.write_text(json.dumps({"workloads": self.pods[:1]}))
        mark = len(self.agent.log())
        await self.agent.start()
        return mark

    async def pod_a_serves_mtls(self) -> None:
        """pod-a calls its own Service through the mesh: its inbound side counts its SPIFFE ID
        on a mutually authenticated connection (a fresh process: fresh counters)."""
        await eventually(lambda: _answers(self.outbound["pod-a"], "a.shop", "a"), timeout=30,
                         interval=0.1)
        assert await self.agent.metric(
            "istio_requests_total", reporter="destination", destination_workload="pod-a",
            source_principal=A_ID, connection_security_policy="mutual_tls") >= 1
        assert self.file("pod-a").exists()


@contextlib.asynccontextmanager
async def _node_up(tmp_path: Path) -> AsyncIterator[_Node]:
    """A control plane and one node agent (`--cache-dir`) fronting pod-a and pod-b, mTLS
    STRICT, each pod answering the other, both identities kept."""
    cp = ControlPlaneProcess(f"sqlite:{tmp_path / 'cp.db'}", tmp_path)
    cp.start()
    agent: NodeAgentProcess | None = None
    try:
        await cp.wait_ready()
        async with named_origin("a") as app_a, named_origin("b") as app_b:
            apps = {"pod-a": app_a, "pod-b": app_b}
            inbound = {p: free_port() for p in apps}
            outbound = {p: free_port() for p in apps}
            status, body = await apply(
                cp.api, {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
                         "metadata": {"name": "default"}, "spec": {"mtls": {"mode": "STRICT"}}},
                service("a", app="a"), service("b", app="b"),
                *(_workload(p, p[-1], outbound[p], inbound[p], apps[p]) for p in apps))
            assert status == 200, body
            pods = []
            for p, app in apps.items():
                token = tmp_path / f"{p}.token"
                token.write_text(await issue_token(cp.api, WorkloadInfo(name=p, namespace=NS)))
                pods.append({"name": p, "namespace": NS, "address": "127.0.0.1",
                             "serviceAccount": p[-1], "outboundPort": outbound[p],
                             "tokenFile": str(token), "labels": {"app": p[-1]},
                             "ports": [{"name": "http", "port": inbound[p],
                                        "targetPort": app}]})
            config = tmp_path / "node.yaml"
            config.write_text(json.dumps({"workloads": pods}))
            agent = NodeAgentProcess(cp, tmp_path, config, tmp_path / "node-cache")
            await agent.start()
            node = _Node(cp, agent, pods, inbound, outbound)
            await eventually(lambda: _answers(outbound["pod-a"], "b.shop", "b"), timeout=30,
                             interval=0.1)
            await eventually(lambda: _answers(outbound["pod-b"], "a.shop", "a"), timeout=10,
                             interval=0.1)
            await eventually(lambda: node.file("pod-a").exists() and node.file("pod-b").exists(),
                             timeout=10)
            yield node
    finally:
        if agent is not None:
            await agent.stop()
        cp.kill()


def _removed_line(text: str) -> list[str]:
    return [x for x in text.splitlines()
            if "removed the kept certificate and key of shop/pod-b at" in x]


@pytest.mark.timeout(120)
async def test_a_pod_taken_off_the_node_leaves_no_key_and_the_other_keeps_serving_mtls(
        tmp_path: Path) -> None:
    async with _node_up(tmp_path) as node:
        b_key = json.loads(node.file("pod-b").read_text())["key"].splitlines()[1]
        mark = await node.restart_with_pod_a_alone()
        # Gone at start, before the control plane's first answer (bounded: one start-up).
        await eventually(lambda: not node.file("pod-b").exists(), timeout=10, interval=0.05)
        text = node.agent.log()[mark:]
        assert len(_removed_line(text)) == 1, text[-3000:]
        assert str(node.file("pod-b")) in _removed_line(text)[0]
        assert "this proxy no longer fronts it" in _removed_line(text)[0]
        assert not list(node.ident.glob(".shop.pod-b*"))  # no leftover of it either
        await node.pod_a_serves_mtls()
        # The control plane's config names pod-a alone; pod-b's ports are not bound.
        assert await nothing_listens(node.inbound["pod-b"])
        assert await nothing_listens(node.outbound["pod-b"])
        ps = await node.cp.proxies()
        assert ps[f"{NS}/pod-a"]["connected"] and not ps[f"{NS}/pod-b"]["connected"], ps
        assert sorted(p.name for p in node.ident.iterdir()) == [f"{NS}.pod-a.index",
                                                                 f"{NS}.pod-a.json"]
        assert b_key not in node.agent.log() and "PRIVATE KEY" not in node.agent.log()


@pytest.mark.timeout(120)
async def test_a_restart_while_the_control_plane_is_down_removes_the_stale_key_and_serves_the_rest(
        tmp_path: Path) -> None:
    async with _node_up(tmp_path) as node:
        node.cp.kill()
        mark = await node.restart_with_pod_a_alone()
        await eventually(lambda: "until the control plane answers" in node.agent.log()[mark:],
                         timeout=20, interval=0.1)
        text = node.agent.log()[mark:]
        # The cached snapshot still names pod-b: left out, and its key removed.
        assert "names shop/pod-b, which this proxy no longer fronts: left out" in text
        assert len(_removed_line(text)) == 1, text[-3000:]
        assert not node.file("pod-b").exists()
        # pod-a is served from the cache, over mTLS with its kept identity (before: the cached
        # snapshot was refused whole, `no identity named 'workload:shop/pod-b'`).
        assert f"with the cached certificate of {NS}/pod-a until" in text
        await node.pod_a_serves_mtls()
        assert await nothing_listens(node.inbound["pod-b"])
        assert await nothing_listens(node.outbound["pod-b"])


@pytest.mark.timeout(120)
async def test_a_symbolic_link_under_a_departed_pods_name_is_not_followed_nor_deleted(
        tmp_path: Path) -> None:
    async with _node_up(tmp_path) as node:
        await node.agent.stop()
        # pod-b's file is replaced by a link to a file of the same content elsewhere: what the
        # proxy did not write is never deleted, and what a link points at never touched.
        decoy = tmp_path / "decoy.json"
        decoy.write_bytes(node.file("pod-b").read_bytes())
        decoy.chmod(0o600)
        node.file("pod-b").unlink()
        node.file("pod-b").symlink_to(decoy)
        before = decoy.read_bytes()
        mark = await node.restart_with_pod_a_alone()

        def refused() -> bool:
            return "not removing the kept certificate of shop/pod-b" in node.agent.log()[mark:]

        await eventually(refused, timeout=20, interval=0.1)
        line = next(x for x in node.agent.log()[mark:].splitlines()
                    if "not removing the kept certificate of shop/pod-b" in x)
        assert "ERROR" in line and "it is a symbolic link" in line
        assert str(node.file("pod-b")) in line and "PRIVATE KEY" not in line
        assert node.file("pod-b").is_symlink() and decoy.read_bytes() == before
        assert not _removed_line(node.agent.log()[mark:])
        await node.pod_a_serves_mtls()
