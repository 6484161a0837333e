"""A node agent's open connections meet a narrowed admission (ADR 0127), end to end in network
namespaces: the mesh of `tests/e2e/test_node_agent.py` (a real control plane, the server's
sidecar, one agent serving pod-a and pod-b, `tulle iptables node apply`), and pods that hold a
connection open through the agent while the mesh changes (`tests/support/held.py`).

A pod listener's `sources` (ADR 0098) and its refusing destinations (ADR 0114) were decided
when a connection was accepted, never again.  Measured before this change: after pod-a's
address moved to another IP, the connections still open from its old address -- a passthrough
stream, a keep-alive HTTP/1 connection and an HTTP/2 one -- went on reaching their
destinations, the HTTP ones as `spiffe://cluster.local/ns/shop/sa/pod-a` (the server read it
in `x-forwarded-client-cert`), 2 s after the change and for as long as they were kept; a
passthrough stream went on after its destination became a meshed agent pod's (refused for a
new connection), and after the Mesh turned `REGISTRY_ONLY`.  Now the agent ends them at the
swap (the last after the swap's 0.25 s grace), and a change that still admits them leaves them
alone."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from tests.e2e.test_node_agent import allow_any, mesh, metrics, vip, workdir  # noqa: F401
from tests.support import meshnet as net
from tests.support.held import Held
from tests.support.netns import testbed  # noqa: F401

from tulle.dataplane.server import SWAP_DRAIN_GRACE

pytestmark = pytest.mark.netns

V1 = "mesh.tulle.dev/v1alpha1"
POD_A = "shop/pod-a|outbound"
H2C = {"apiVersion": V1, "kind": "Service", "metadata": {"name": "server-h2", "namespace": "shop"},
       "spec": {"selector": {"app": "server"},
                "ports": [{"port": 80, "targetPort": 8080, "appProtocol": "kubernetes.io/h2c"}]}}
"""The server's port once more, as HTTP/2 (prior knowledge): an HTTP/2 connection to hold."""


def apply(m: dict[str, Any], *docs: dict[str, Any]) -> None:
    path = m["workdir"] / "change.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    m["cp"].run([*net.TULLE, "apply", "-f", str(path)],
                env={**net.ENV, "TULLE_TOKEN_FILE": str(m["workdir"] / "admin-token")})


def listener(m: dict[str, Any], name: str = POD_A) -> dict[str, Any]:
    """The agent's listener `name` as its `/config_dump` shows it."""
    dump = json.loads(m["node"].run(["curl", "-sS", "--max-time", "5",
                                     "http://127.0.0.1:15000/config_dump"]).stdout)
    return next((dict(lc) for lc in dump.get("listeners", []) if lc.get("name") == name), {})


def agent_pod(name: str, address: str, port: int) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "Workload",
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
            "spec": {"address": address, "serviceAccount": name, "ports": [],
                     "interception": "agent", "outboundPort": port}}


def mesh_doc(outbound: str) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "Mesh", "metadata": {"name": "default"},
            "spec": {"mtls": {"mode": "STRICT"}, "outboundTrafficPolicy": {"mode": outbound}}}


def metric(m: dict[str, Any], name: str, **labels: str) -> float:
    """The sum of the agent's series of `name` carrying `labels`."""
    total = 0.0
    for line in metrics(m["node"]).splitlines():
        series, _, value = line.rpartition(" ")
        if series.partition("{")[0] == name and all(f'{k}="{v}"' in series
                                                     for k, v in labels.items()):
            total += float(value)
    return total


@pytest.fixture
def outside(mesh: dict[str, Any]) -> Iterator[str]:  # noqa: F811
    """Under ALLOW_ANY, an application in the control plane's namespace, no workload of the
    mesh (its echo on 9000): pod-a's calls to it are passed through by the agent."""
    allow_any(mesh)
    log = mesh["workdir"] / "outside-app.log"
    with log.open("wb") as out:
        mesh["cp"].popen([sys.executable, str(mesh["workdir"] / "app.py"), "outside"],
                         stdout=out, stderr=out)
    net.wait_for("the outside app", lambda: net.listening(mesh["cp"], 9000), log)
    yield mesh["cp"].address


@pytest.fixture
def held(mesh: dict[str, Any], outside: str) -> Iterator[dict[str, Held]]:  # noqa: F811
    """pod-a holds a passthrough stream, a keep-alive HTTP/1 and an HTTP/2 connection to the
    server through the agent, each answered once; pod-b a passthrough stream."""
    apply(mesh, H2C)
    server, server_h2 = vip(mesh), vip(mesh, "server-h2")
    pod_a, workdir = mesh["pod-a"], mesh["workdir"]  # noqa: F811
    out: dict[str, Held] = {}
    try:
        out["tcp"] = Held.start(pod_a, workdir, "tcp", outside, 9000)
        out["http"] = Held.start(pod_a, workdir, "http", server, 80)
        out["h2"] = Held.start(pod_a, workdir, "h2", server_h2, 80)
        out["pod-b"] = Held.start(mesh["pod-b"], workdir, "tcp", outside, 9000)
        assert out["tcp"].exchange() == {"ok": True, "data": "outside ping 1"}
        for kind in ("http", "h2"):
            got = out[kind].exchange()
            assert got["ok"] and got["status"] == 200, (kind, got)
            assert json.loads(got["data"])["headers"]["x-forwarded-client-cert"] == \
                "URI=spiffe://cluster.local/ns/shop/sa/pod-a"
        assert out["pod-b"].exchange() == {"ok": True, "data": "outside ping 1"}
        yield out
    finally:
        for h in out.values():
            h.close()


def test_a_pods_open_connections_end_when_its_address_moves(
        mesh: dict[str, Any], held: dict[str, Held]) -> None:  # noqa: F811
    """pod-a's address moved to 10.232.0.12: what is still open from 10.232.0.2 no longer
    borrows pod-a's listener and identity."""
    apply(mesh, agent_pod("pod-a", "10.232.0.12", 15001))
    net.wait_for("pod-a's new sources at the agent",
                 lambda: listener(mesh).get("sources") == ["10.232.0.12"])
    for kind in ("tcp", "http", "h2"):
        got = held[kind].exchange()
        assert not got["ok"], (f"pod-a's {kind} connection from its old address still "
                               f"served: {got}", mesh["agent_log"].read_text()[-3000:])
    assert held["pod-b"].exchange() == {"ok": True, "data": "outside ping 2"}
    assert metric(mesh, "tulle_proxy_tcp_config_closes_total", listener=POD_A,
                  reason="source_refused") == 1
    assert metric(mesh, "tulle_proxy_http_config_closes_total", listener=POD_A,
                  reason="source_refused") == 2
    assert (f"listener {POD_A}: 3 open connection(s) the new config no longer admits ended "
            "(source_refused 3)") in mesh["agent_log"].read_text()


def test_a_passthrough_stream_ends_when_its_destination_becomes_a_meshed_pods(
        mesh: dict[str, Any], held: dict[str, Held], outside: str) -> None:  # noqa: F811
    """The outside application's address became an agent pod's (it declares no port): the
    agent refuses a new connection to it (ADR 0114) and now resets the open one."""
    apply(mesh, agent_pod("outside", outside, 15009))
    net.wait_for("the refusal at the agent", lambda: any(
        d.get("refuse") and d.get("address") == outside
        for d in listener(mesh).get("destinations", [])))
    got = held["tcp"].exchange()
    assert not got["ok"], (got, mesh["agent_log"].read_text()[-3000:])
    assert held["pod-b"].exchange()["ok"] is False  # pod-b's listener refuses it as well
    assert metric(mesh, "tulle_proxy_tcp_config_closes_total", listener=POD_A,
                  reason="destination_refused") == 1
    for kind in ("http", "h2"):  # its other connections go elsewhere: left alone
        assert held[kind].exchange()["status"] == 200


def test_a_passthrough_stream_ends_when_the_mesh_turns_registry_only(
        mesh: dict[str, Any], held: dict[str, Held]) -> None:  # noqa: F811
    apply(mesh, mesh_doc("REGISTRY_ONLY"))
    net.wait_for("REGISTRY_ONLY at the agent", lambda: not listener(mesh).get("passthrough"))
    time.sleep(SWAP_DRAIN_GRACE + 0.25)  # no way in any more: closed when the grace ends
    got = held["tcp"].exchange()
    assert not got["ok"], (got, mesh["agent_log"].read_text()[-3000:])
    assert metric(mesh, "tulle_proxy_tcp_config_closes_total", listener=POD_A,
                  reason="no_destination") == 1
    for kind in ("http", "h2"):
        assert held[kind].exchange()["status"] == 200


def test_a_change_that_still_admits_them_leaves_a_pods_connections_alone(
        mesh: dict[str, Any], held: dict[str, Held]) -> None:  # noqa: F811
    """pod-b's address moves (pod-a's listener now refuses another address) and a Service is
    added (another destination): both change pod-a's listener, neither its admission of what
    it holds.  Passes before and after ADR 0127: it guards against cutting too much."""
    apply(mesh, agent_pod("pod-b", "10.232.0.13", 15002),
          {"apiVersion": V1, "kind": "Service", "metadata": {"name": "more", "namespace": "shop"},
           "spec": {"selector": {"app": "server"}, "ports": [{"port": 81, "targetPort": 8080}]}})
    net.wait_for("the change at the agent", lambda: any(
        d.get("refuse") and d.get("address") == "10.232.0.13"
        for d in listener(mesh).get("destinations", [])))
    vip(mesh, "more")
    for kind in ("tcp", "http", "h2"):
        got = held[kind].exchange()
        assert got["ok"], (kind, got, mesh["agent_log"].read_text()[-3000:])
    assert metric(mesh, "tulle_proxy_tcp_config_closes_total", listener=POD_A) == 0
    assert metric(mesh, "tulle_proxy_http_config_closes_total", listener=POD_A) == 0
