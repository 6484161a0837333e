"""Open opaque TCP streams follow config changes (ADR 0117).

Authorization on an opaque TCP port was decided only when a connection opened: a DENY (or an
ALLOW that no longer names the caller) applied later refused new connections while a stream
already open kept reaching the application, and a removed port's streams ran until they ended
(ADR 0108, "left as they are").  Now a swap decides every open relay again by the new
policies and resets those they refuse (counted as a refusal at open is), and a removed
listener's relays are closed after the swap's grace.

Real `tulle control-plane run` and `tulle proxy run` processes on loopback.  The application
is a TCP echo that records every byte each connection brought it; the clients are raw sockets
on the sidecar's inbound port, from 127.0.0.1 (a caller the policies leave alone) and
127.0.0.2 (the one they refuse).  The Mesh is PERMISSIVE: the callers are outside the mesh."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tests.support.controlplane import (
    ControlPlaneProcess,
    apply,
    control_plane_process,
    eventually,
)
from tests.support.proxy import free_port
from tests.support.sidecar_process import SidecarProcess, sidecar_processes
from tests.support.tcp_streams import HeldStream, RecordingEcho, recording_echo

NS = "shop"
V1 = "mesh.tulle.dev/v1alpha1"
KEPT, CUT = "127.0.0.1", "127.0.0.2"
CUT_WITHIN = 10.0
"""Seconds from the apply to the close: the push, the swap, and the grace where one applies
(one run each took well under a second; the bound is for a loaded CI machine)."""


def mesh_doc(mode: str, flow_log: Path | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"mtls": {"mode": mode}}
    if flow_log is not None:
        spec["observability"] = {"flowLog": {"sink": {"type": "file", "path": str(flow_log)},
                                             "interval": "0s"}}
    return {"apiVersion": V1, "kind": "Mesh", "metadata": {"name": "default"}, "spec": spec}


def workload_doc(ports: dict[str, tuple[int, int]]) -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "Workload",
            "metadata": {"name": "db-0", "namespace": NS, "labels": {"app": "db"}},
            "spec": {"address": "127.0.0.1", "ports": [
                {"name": name, "port": port, "targetPort": target}
                for name, (port, target) in ports.items()]}}


def service_doc() -> dict[str, Any]:
    return {"apiVersion": V1, "kind": "Service", "metadata": {"name": "db", "namespace": NS},
            "spec": {"selector": {"app": "db"},
                     "ports": [{"name": "tcp-db", "port": 5432, "targetPort": "tcp-db"}]}}


def policy_doc(name: str, action: str, ip_block: str, dry_run: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"targetRef": {"group": "", "kind": "Service", "name": "db"},
                            "action": action, "rules": [{"from": [{"ipBlocks": [ip_block]}]}]}
    if dry_run:
        spec["dryRun"] = True
    return {"apiVersion": "policy.tulle.dev/v1alpha1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


@dataclass
class DbMesh:
    cp: ControlPlaneProcess
    car: SidecarProcess
    app: RecordingEcho
    ports: dict[str, tuple[int, int]]

    def port(self, name: str = "tcp-db") -> int:
        return self.ports[name][0]

    async def apply(self, *docs: dict[str, Any]) -> None:
        status, body = await apply(self.cp.api, *docs)
        assert status == 200, body

    async def metric(self, name: str, **labels: str) -> float:
        return await self.car.metric(name, **labels)


@contextlib.asynccontextmanager
async def db_mesh(tmp_path: Path, names: tuple[str, ...] = ("tcp-db",), mode: str = "PERMISSIVE",
                  flow_log: Path | None = None) -> AsyncIterator[DbMesh]:
    """A control plane, the workload `db-0` (its TCP ports to the recording echo) behind the
    Service `db`, and its sidecar, ready."""
    async with recording_echo() as app, \
            control_plane_process(f"sqlite:{tmp_path / 'cp.db'}", tmp_path) as cp:
        ports = {name: (free_port(), app.port) for name in names}
        status, body = await apply(cp.api, mesh_doc(mode, flow_log), workload_doc(ports),
                                   service_doc())
        assert status == 200, body
        car = SidecarProcess(cp.api, cp.stream_port, "db-0", tmp_path,
                             ports=[(n, p, t) for n, (p, t) in ports.items()],
                             labels={"app": "db"})
        async with sidecar_processes(car):
            yield DbMesh(cp, car, app, ports)


async def opened(m: DbMesh, source: str, hello: bytes, port: int | None = None) -> HeldStream:
    """A connection from `source`, echoing once: relayed, its application connection
    accepted (the next one the application records)."""
    c = await HeldStream.open(port or m.port(), source)
    assert await c.echoes(hello)
    return c


def flow_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("action", "ip_block", "flow_log"), [
    ("DENY", f"{CUT}/32", False),
    ("ALLOW", f"{KEPT}/32", True),  # an ALLOW list that no longer names the caller
])
async def test_a_policy_applied_later_cuts_the_open_stream_it_refuses(
        tmp_path: Path, action: str, ip_block: str, flow_log: bool) -> None:
    flows = tmp_path / "flows.log"
    async with db_mesh(tmp_path, flow_log=flows if flow_log else None) as m:
        kept = await opened(m, KEPT, b"kept:hello")
        cut = await opened(m, CUT, b"cut:hello")
        assert [bytes(b) for b in m.app.received] == [b"kept:hello", b"cut:hello"]

        loop = asyncio.get_running_loop()
        began = loop.time()
        await m.apply(policy_doc("db-callers", action, ip_block))
        assert await cut.cut_within(CUT_WITHIN), \
            f"a stream the new {action} policy refuses still reaches the application"
        print(f"\n{action}: refused stream closed {loop.time() - began:.2f} s after the apply")
        await cut.write_after(b"cut:after")
        # The caller the policy leaves alone keeps flowing, past the grace too.
        await asyncio.sleep(0.5)
        assert await kept.echoes(b"kept:still")
        assert [bytes(b) for b in m.app.received] == [b"kept:hellokept:still", b"cut:hello"], \
            "bytes written after the close reached the application"

        # Counted as a refusal at open is: the deciding policy, the filter, and the close.
        assert await m.metric("tulle_proxy_authz_decisions_total", policy=f"{NS}/db-callers",
                              action=action, result="deny") == 1
        assert await m.metric("tulle_proxy_authz_decisions_total", result="allow") == 0
        assert await m.metric("tulle_proxy_network_filter_rejections_total", filter="authz",
                              reason="denied") == 1
        assert await m.metric("tulle_proxy_tcp_config_closes_total",
                              listener=f"inbound|{m.port()}", reason="revoked") == 1
        assert "opaque stream(s) the new config refuses closed (revoked)" in m.car.log()

        # The refused caller cannot come back; nothing new reaches the application.
        again = await HeldStream.open(m.port(), CUT)
        again.w.write(b"again")
        assert await again.cut_within(5)
        assert len(m.app.received) == 2
        for c in (kept, cut, again):
            c.close()

        if flow_log:
            async def revoked_record() -> dict[str, Any] | None:
                return next((r for r in flow_records(flows)
                             if r["close_reason"] == "revoked"), None)
            await eventually(revoked_record, timeout=5)
            record = await revoked_record()
            assert record is not None
            assert record["source_address"] == CUT
            assert record["verdict"] == "deny:authz:denied"
            assert record["bytes_received"] == len(b"cut:hello")
            assert record["upstream_host"] == f"127.0.0.1:{m.app.port}"


@pytest.mark.timeout(120)
async def test_a_dry_run_or_audit_policy_counts_an_open_stream_and_never_cuts_it(
        tmp_path: Path) -> None:
    async with db_mesh(tmp_path) as m:
        kept = await opened(m, KEPT, b"kept:hello")
        watched = await opened(m, CUT, b"watched:hello")
        await m.apply(policy_doc("db-callers", "DENY", f"{CUT}/32", dry_run=True),
                      policy_doc("db-audit", "AUDIT", "127.0.0.0/8"))

        # At the swap, the open stream the dry run would cut is counted and logged, once.
        async def counted() -> bool:
            return await m.metric("tulle_proxy_authz_decisions_total",
                                  policy=f"{NS}/db-callers", result="dry_run_deny") == 1
        await eventually(counted, timeout=CUT_WITHIN)
        assert "policy shop/db-callers would deny TCP" in m.car.log()
        await asyncio.sleep(0.5)  # past the grace: nothing else comes
        assert await watched.echoes(b"watched:still")
        assert await kept.echoes(b"kept:still")
        assert await m.metric("tulle_proxy_tcp_config_closes_total") == 0
        assert await m.metric("tulle_proxy_authz_decisions_total", result="deny") == 0

        # Enforced, the same policy cuts it.
        await m.apply(policy_doc("db-callers", "DENY", f"{CUT}/32"),
                      policy_doc("db-audit", "AUDIT", "127.0.0.0/8"))
        assert await watched.cut_within(CUT_WITHIN)
        assert await kept.echoes(b"kept:after")
        assert await m.metric("tulle_proxy_tcp_config_closes_total", reason="revoked") == 1
        for c in (kept, watched):
            c.close()


@pytest.mark.timeout(120)
async def test_a_removed_ports_open_stream_is_closed(tmp_path: Path) -> None:
    async with db_mesh(tmp_path, names=("tcp-db", "tcp-old")) as m:
        kept = await opened(m, KEPT, b"kept:hello")
        gone = await opened(m, KEPT, b"gone:hello", port=m.port("tcp-old"))

        loop = asyncio.get_running_loop()
        began = loop.time()
        await m.apply(workload_doc({"tcp-db": m.ports["tcp-db"]}))
        assert await gone.cut_within(CUT_WITHIN), \
            "a removed port's stream still reaches the application"
        print(f"\nremoved port: stream closed {loop.time() - began:.2f} s after the apply")
        await gone.write_after(b"gone:after")
        assert await kept.echoes(b"kept:still")
        await asyncio.sleep(0.3)
        assert [bytes(b) for b in m.app.received] == [b"kept:hellokept:still", b"gone:hello"], \
            "bytes written after the close reached the application"
        assert await m.metric("tulle_proxy_tcp_config_closes_total",
                              listener=f"inbound|{m.port('tcp-old')}",
                              reason="listener_removed") == 1
        assert "opaque stream(s) of the removed listener closed" in m.car.log()
        for c in (kept, gone):
            c.close()


@pytest.mark.timeout(120)
async def test_a_replaced_listeners_stream_its_successor_refuses_is_cut(tmp_path: Path) -> None:
    """DISABLED -> PERMISSIVE replaces the listener (it gets filter chains); its successor
    still takes plaintext, so its streams went on (ADR 0108) -- also one the policy applied
    with the change refuses."""
    async with db_mesh(tmp_path, mode="DISABLED") as m:
        kept = await opened(m, KEPT, b"kept:hello")
        cut = await opened(m, CUT, b"cut:hello")
        await m.apply(mesh_doc("PERMISSIVE"), policy_doc("db-callers", "DENY", f"{CUT}/32"))
        assert await cut.cut_within(CUT_WITHIN), \
            "a replaced listener's stream its successor refuses still flows"
        await cut.write_after(b"cut:after")
        await asyncio.sleep(0.5)  # past the replaced listener's grace
        assert await kept.echoes(b"kept:still")
        assert [bytes(b) for b in m.app.received] == [b"kept:hellokept:still", b"cut:hello"]
        assert await m.metric("tulle_proxy_tcp_config_closes_total", reason="revoked") == 1
        assert await m.metric("tulle_proxy_authz_decisions_total", policy=f"{NS}/db-callers",
                              action="DENY", result="deny") == 1
        for c in (kept, cut):
            c.close()
