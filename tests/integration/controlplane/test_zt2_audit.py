"""Second zero-trust audit on the wire (after ADR 0096), the parts that need the control plane:
a node agent (ADR 0047) and the connections its per-pod listeners take from sources that are
none of its pods.  A real control plane, a real sidecar in front of a recording application,
a real node agent; only the kernel's SO_ORIGINAL_DST answer is stood in for (as in
tests/integration/dataplane/test_l4_audit.py).

Each test failed on the code it was written against (the defect its docstring names) and
passes once the defect is fixed."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
from tests.integration.controlplane.test_mtls import NS, SERVER_ADDR, V1, workload
from tests.integration.dataplane.test_zt2_audit import head_recorder
from tests.support.controlplane import (
    apply,
    eventually,
    issue_token,
    running_control_plane,
    subscribe,
)
from tests.support.proxy import free_port

from tulle.dataplane.agent import Agent
from tulle.dataplane.listeners import detect
from tulle.dataplane.server import ProxyServer
from tulle.proxyconfig.stream import WorkloadInfo

POD_A, POD_B, STRANGER = "127.0.0.3", "127.0.0.4", "127.0.0.99"


def agent_pod(name: str, sa: str, address: str, outbound: int) -> dict[str, Any]:
    """A pod served by the node agent (ADR 0047): its outbound listener is the agent's
    127.0.0.1:`outbound`, to which `tulle iptables node apply` DNATs the pod's TCP (the
    pod's own address stays the source)."""
    return {"apiVersion": V1, "kind": "Workload",
            "metadata": {"name": name, "namespace": NS, "labels": {"app": name}},
            "spec": {"address": address, "serviceAccount": sa, "interception": "agent",
                     "outboundPort": outbound, "ports": []}}


async def _call_from(source: str, port: int) -> bytes:
    """One HTTP/1.1 request to the agent's listener on 127.0.0.1:`port` from a socket bound
    to `source`: the status line, or b"" when the connection was refused or closed."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind((source, 0))
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        r, w = await asyncio.open_connection(sock=sock)
    except OSError:
        sock.close()
        return b""
    try:
        w.write(b"GET /orders HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n")
        return (await asyncio.wait_for(r.readline(), 10)).strip()
    except (ConnectionError, TimeoutError):
        return b""
    finally:
        w.close()


async def test_a_node_agents_pod_listener_lends_its_identity_to_no_other_source(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DEFECT: a node agent (ADR 0047) serves a connection to pod-a's outbound listener from
    *any* source, with pod-a's certificate: from 127.0.0.99 (no pod of the node) and from
    pod-b's own address alike, the call reaches `api` as `spiffe://cluster.local/ns/shop/sa/a`
    (the application reads it in `x-forwarded-client-cert`) and its policies judge it as
    pod-a.  ADR 0047 takes "the listener is the pod" and keeps the pod's address as the
    source through the DNAT, but the data plane never compares them: anything that can reach
    the agent's loopback -- a hostNetwork pod, a node daemon, a process on a VM agent -- can
    call as whichever pod it likes by picking the port.

    Expected: a pod's listener takes connections from that pod's address (or its additional
    addresses) only; any other source is refused (nothing reaches the destination, counted).
    Istio's ztunnel looks an outbound connection's workload up by its source address and
    refuses an unknown source; it never lends a pod's identity to one.  The control: from
    pod-a's own address the call goes through as pod-a."""
    out_a, out_b, inbound = free_port(), free_port(), free_port()
    async with head_recorder() as app, running_control_plane() as cp:
        status, body = await apply(
            cp.api_url,
            workload("api-0", "api", SERVER_ADDR,
                     [{"name": "http", "port": inbound, "targetPort": app.port}],
                     outbound=free_port(), app="api"),
            {"apiVersion": V1, "kind": "Service", "metadata": {"name": "api", "namespace": NS},
             "spec": {"selector": {"app": "api"},
                      "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}},
            agent_pod("pod-a", "a", POD_A, out_a), agent_pod("pod-b", "b", POD_B, out_b))
        assert status == 200, body
        api = await subscribe([cp.stream_port], WorkloadInfo(
            name="api-0", namespace=NS, address=SERVER_ADDR), cache_dir=tmp_path)
        node = ProxyServer()
        a = WorkloadInfo(name="pod-a", namespace=NS, address=POD_A)
        b = WorkloadInfo(name="pod-b", namespace=NS, address=POD_B)
        agent = Agent(node, [("127.0.0.1", cp.stream_port)], a,
                      token=await issue_token(cp.api_url, a), workloads=[b],
                      node_tokens={"shop/pod-b": await issue_token(cp.api_url, b)},
                      backoff_max=0.2)
        task = asyncio.get_running_loop().create_task(agent.run())
        try:
            async def vip() -> str:
                cfg = agent.current
                for lc in cfg.listeners if cfg is not None else ():
                    for d in lc.destinations:
                        if d.port == 80 and d.route_table:
                            return d.address
                return ""

            await eventually(vip, timeout=15)
            destination = (await vip(), 80)
            monkeypatch.setattr(detect, "original_destination", lambda sock: destination)

            async def as_pod_a() -> bool:
                return (await _call_from(POD_A, out_a)).startswith(b"HTTP/1.1 200")

            # The control: pod-a's own connection leaves as pod-a.
            await eventually(as_pod_a, timeout=15)
            assert app.heads[-1].count(b"URI=spiffe://cluster.local/ns/shop/sa/a\r\n") == 1
            app.heads.clear()

            for source in (STRANGER, POD_B):
                line = await _call_from(source, out_a)
                lent = [h for h in app.heads if b"sa/a\r\n" in h]
                assert not line.startswith(b"HTTP/1.1 200") and not lent, (
                    f"a connection from {source} to pod-a's listener answered {line!r}; "
                    f"the application saw {len(lent)} request(s) from spiffe://cluster.local/"
                    f"ns/shop/sa/a")
        finally:
            agent.stop()
            task.cancel()
            await node.close()
            await api.stop()
