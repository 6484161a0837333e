"""Sidecars restarted while their control plane is down serve mTLS with the identities they
kept in `--cache-dir` (ADR 0123; DESIGN.md decision 4).

Before, the cached snapshot named the workload's certificate, whose key was never written, so a
restarted sidecar refused its own cache (`no identity named 'workload'`) and served nothing
until its control plane came back (ADR 0108 "Left as they are").  Real `tulle control-plane
run` and `tulle proxy run --cache-dir` processes, mTLS STRICT: traffic flows, the control plane
is killed, both sidecars are killed and started again, and the server side still sees the
client's SPIFFE ID over mTLS; a cached identity that is exposed, foreign, tampered with or
expired is refused in one line and nothing is served; the control plane comes back and
replaces every certificate read from disk."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from tests.support.controlplane import (
    ControlPlaneProcess,
    apply,
    eventually,
    issue_token,
    named_origin,
)
from tests.support.node_agent import NodeAgentProcess
from tests.support.proxy import free_port
from tests.support.sidecar_process import SidecarProcess
from tests.support.subproc import nothing_listens

from tulle.proxyconfig.stream import WorkloadInfo

NS = "shop"
WEB_ID = "spiffe://cluster.local/ns/shop/sa/web"


def _mesh() -> dict[str, Any]:
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Mesh",
            "metadata": {"name": "default"}, "spec": {"mtls": {"mode": "STRICT"}}}


def _workload(name: str, sa: str, outbound: int, ports: list[dict[str, Any]],
              **labels: str) -> dict[str, Any]:
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Workload",
            "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"address": "127.0.0.1", "outboundPort": outbound, "serviceAccount": sa,
                     "ports": ports}}


def _service(name: str, **selector: str) -> dict[str, Any]:
    return {"apiVersion": "mesh.tulle.dev/v1alpha1", "kind": "Service",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": selector,
                     "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


async def _call(outbound: int, host: str) -> tuple[int, str]:
    """GET /x through a sidecar's outbound listener, to Service `host`."""
    try:
        async with aiohttp.ClientSession() as s, s.get(
                f"http://127.0.0.1:{outbound}/x", headers={"Host": host},
                timeout=aiohttp.ClientTimeout(total=5)) as r:
            return r.status, await r.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return 0, str(exc)


async def _answers(outbound: int, host: str, name: str) -> bool:
    status, body = await _call(outbound, host)
    return status == 200 and json.loads(body)["name"] == name


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@dataclass
class _Mesh:
    cp: ControlPlaneProcess
    web: SidecarProcess
    api: SidecarProcess
    api_port: int

    def identity(self, car: SidecarProcess) -> Path:
        assert car.cache_dir is not None
        return car.cache_dir / "identity" / f"{NS}.{car.name}.json"


async def _stop(*cars: SidecarProcess) -> None:
    for c in cars:
        c.kill()
        if c.proc is not None:
            await asyncio.wait_for(c.proc.wait(), 10)


@contextlib.asynccontextmanager
async def _mesh_up(tmp_path: Path, *cp_extra: str) -> AsyncIterator[_Mesh]:
    """web-0 (a client) and api-0 (Service `api`) with `--cache-dir`, mTLS STRICT, traffic
    flowing from web-0 to api-0."""
    cp = ControlPlaneProcess(f"sqlite:{tmp_path / 'cp.db'}", tmp_path, *cp_extra)
    cp.start()
    cars: list[SidecarProcess] = []
    try:
        await cp.wait_ready()
        async with named_origin("api") as app:
            port = free_port()
            web = SidecarProcess(cp.api, cp.stream_port, "web-0", tmp_path,
                                 labels={"app": "web"}, cache_dir=tmp_path / "web-cache")
            api = SidecarProcess(cp.api, cp.stream_port, "api-0", tmp_path,
                                 ports=[("http", port, app)], labels={"app": "api"},
                                 cache_dir=tmp_path / "api-cache")
            status, body = await apply(
                cp.api, _mesh(), _service("api", app="api"),
                _workload("web-0", "web", web.outbound_port, [], app="web"),
                _workload("api-0", "api", api.outbound_port,
                          [{"name": "http", "port": port, "targetPort": app}], app="api"))
            assert status == 200, body
            cars += [web, api]
            for c in (web, api):
                await c.start()
            for c in (web, api):
                await c.wait_ready()
            await eventually(lambda: _answers(web.outbound_port, "api.shop", "api"),
                             timeout=20, interval=0.1)
            yield _Mesh(cp, web, api, port)
    finally:
        for c in cars:
            c.kill()
        cp.kill()


@pytest.mark.timeout(150)
async def test_sidecars_restarted_while_the_control_plane_is_down_serve_mtls_with_their_cached_identities(
        tmp_path: Path) -> None:
    async with _mesh_up(tmp_path) as m:
        web, api = m.web, m.api
        assert await api.metric("istio_requests_total", reporter="destination",
                                source_principal=WEB_ID,
                                connection_security_policy="mutual_tls") >= 1
        await asyncio.sleep(0.5)  # (both have their certificates: traffic flowed)
        before = {c.name: json.loads(m.identity(c).read_text()) for c in (web, api)
                  if m.identity(c).exists()}

        m.cp.kill()
        await _stop(web, api)
        marks = {c.name: len(c.log()) for c in (web, api)}
        for c in (web, api):
            await c.start(token=c.token)  # (used already: the certificate is presented)
        for c in (web, api):
            await c.wait_ready(timeout=20)  # (before ADR 0123: never, nothing was served)
        for c in (web, api):
            assert f"with the cached certificate of shop/{c.name} until the control plane " \
                   f"answers" in c.log()[marks[c.name]:]
        # mTLS with the cached identities: api-0 (a fresh process, fresh counters) sees
        # web-0's SPIFFE ID on a mutually authenticated connection.
        assert await _answers(web.outbound_port, "api.shop", "api")
        assert await api.metric("istio_requests_total", reporter="destination",
                                source_principal=WEB_ID,
                                connection_security_policy="mutual_tls") >= 1
        # Each identity on disk: its own 0600 file in a 0700 directory; the key is in no log
        # and no config dump.
        for c in (web, api):
            path = m.identity(c)
            assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
            assert "PRIVATE KEY" in path.read_text()
            key_line = before[c.name]["key"].splitlines()[1]
            status, dump = await c.admin("/config_dump")
            assert status == 200 and "PRIVATE KEY" not in dump and key_line not in dump
            assert "PRIVATE KEY" not in c.log() and key_line not in c.log()

        # The control plane comes back: both proxies move to fresh certificates (the normal
        # CSR flow, at their first hello), and keep serving.
        m.cp.start()
        await m.cp.wait_ready()
        for c in (web, api):
            def fresh(c: SidecarProcess = c) -> bool:
                return "issued in place of the one read from disk" in c.log()[marks[c.name]:]

            await eventually(fresh, timeout=30, interval=0.1)  # (said once it is on disk)
            after = json.loads(m.identity(c).read_text())
            assert after["certificate"] != before[c.name]["certificate"]
            assert after["key"] != before[c.name]["key"]
            assert after["issued_at"] > before[c.name]["issued_at"]
        ps = await m.cp.proxies()
        assert ps[f"{NS}/web-0"]["connected"] and ps[f"{NS}/api-0"]["connected"], ps
        assert await _answers(web.outbound_port, "api.shop", "api")


def _tampered_certificate(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` with one bit of its leaf's signature flipped (still well-formed X.509)."""
    chain = x509.load_pem_x509_certificates(doc["certificate"].encode())
    der = bytearray(chain[0].public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    leaf = x509.load_der_x509_certificate(bytes(der)).public_bytes(serialization.Encoding.PEM)
    rest = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in chain[1:])
    return {**doc, "certificate": leaf.decode() + rest}


def _other_key(doc: dict[str, Any]) -> dict[str, Any]:
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    return {**doc, "key": key.decode()}


def _write(path: Path, doc: dict[str, Any], mode: int = 0o600) -> None:
    path.unlink(missing_ok=True)
    path.write_text(json.dumps(doc))
    path.chmod(mode)


@pytest.mark.timeout(150)
async def test_an_exposed_foreign_or_tampered_cached_identity_is_refused_in_one_line(
        tmp_path: Path) -> None:
    async with _mesh_up(tmp_path) as m:
        api, path = m.api, m.identity(m.api)
        await eventually(lambda: path.exists() and m.identity(m.web).exists(), timeout=10)
        m.cp.kill()
        await _stop(m.web, api)
        good = json.loads(path.read_text())
        web_doc = json.loads(m.identity(m.web).read_text())
        cases: list[tuple[str, dict[str, Any], int, str]] = [
            ("readable by others", good, 0o644, "mode 0644 lets group or others in"),
            ("another workload's file", web_doc, 0o600,
             "it is workload 'shop/web-0''s, not shop/api-0's"),
            ("another workload's certificate under this name",
             {**web_doc, "workload": "shop/api-0"}, 0o600,
             "the certificate is not workload api-0's"),
            ("a certificate tampered with", _tampered_certificate(good), 0o600,
             "the certificate does not chain to a valid root of the trust bundle"),
            ("a key that is not the certificate's", _other_key(good), 0o600,
             "its key is not the certificate's"),
        ]
        for what, doc, mode, line in cases:
            _write(path, doc, mode)
            mark = len(api.log())
            await api.start(token=api.token)
            def refused(mark: int = mark) -> bool:
                return "not serving cached snapshot" in api.log()[mark:]

            await eventually(refused, timeout=20, interval=0.1)
            text = api.log()[mark:]
            refusal = [x for x in text.splitlines() if "not serving cached snapshot" in x]
            assert len(refusal) == 1 and line in refusal[0], (what, refusal)
            assert str(path) in refusal[0] and "waiting for the control plane" in refusal[0]
            assert ("ERROR" in refusal[0]) == (mode != 0o600), (what, refusal)
            assert "PRIVATE KEY" not in text
            assert not await api.ready(), what
            assert await nothing_listens(m.api_port), what  # its listener was never bound
            await _stop(api)
        if os.geteuid() == 0:  # owned by another uid (only root can make such a file)
            _write(path, good)
            os.chown(path, 65534, 65534)
            mark = len(api.log())
            await api.start(token=api.token)
            await eventually(lambda: "owned by uid 65534" in api.log()[mark:], timeout=20,
                             interval=0.1)
            assert not await api.ready()
            await _stop(api)
        # The same file as it was is served: the refusals were about the file.
        _write(path, good)
        mark = len(api.log())
        await api.start(token=api.token)
        await api.wait_ready()
        assert "with the cached certificate of shop/api-0" in api.log()[mark:]


@pytest.mark.timeout(120)
async def test_a_cached_certificate_past_its_expiry_is_not_served(tmp_path: Path) -> None:
    """A certificate that expires while the control plane is away stays in force (peers
    refuse it; nothing else would serve mTLS) and is said once; a proxy started with it
    refuses it and serves nothing."""
    async with _mesh_up(tmp_path, "--cert-ttl", "12s") as m:
        api, path = m.api, m.identity(m.api)
        await eventually(path.exists, timeout=10)
        m.cp.kill()
        await _stop(m.web, api)
        not_after = x509.load_pem_x509_certificates(json.loads(path.read_text())[
            "certificate"].encode())[0].not_valid_after_utc.timestamp()
        now = time.time()  # noqa: TID251 - wall clock vs the certificate
        assert not_after > now + 2, "expired before the restart: the test is too slow"
        mark = len(api.log())
        await api.start(token=api.token)
        await api.wait_ready()
        assert "with the cached certificate of shop/api-0" in api.log()[mark:]
        await eventually(lambda: "the certificate of shop/api-0 expired at" in api.log()[mark:],
                         timeout=30, interval=0.2)
        assert api.log()[mark:].count("the certificate of shop/api-0 expired at") == 1
        await _stop(api)
        mark = len(api.log())
        await api.start(token=api.token)
        await eventually(lambda: "not serving cached snapshot" in api.log()[mark:], timeout=20,
                         interval=0.1)
        assert "the certificate expired at" in api.log()[mark:]
        assert not await api.ready()
        assert await nothing_listens(m.api_port)


@pytest.mark.timeout(150)
async def test_a_node_agent_serves_the_pods_whose_identities_it_kept_and_waits_for_the_others(
        tmp_path: Path) -> None:
    cp = ControlPlaneProcess(f"sqlite:{tmp_path / 'cp.db'}", tmp_path)
    cp.start()
    node: NodeAgentProcess | None = None
    try:
        await cp.wait_ready()
        async with named_origin("a") as app_a, named_origin("b") as app_b:
            pa, pb, oa, ob = (free_port() for _ in range(4))
            status, body = await apply(
                cp.api, _mesh(), _service("a", app="a"), _service("b", app="b"),
                _workload("pod-a", "a", oa, [{"name": "http", "port": pa, "targetPort": app_a}],
                          app="a"),
                _workload("pod-b", "b", ob, [{"name": "http", "port": pb, "targetPort": app_b}],
                          app="b"))
            assert status == 200, body
            pods = []
            for name, sa, port, app, out in (("pod-a", "a", pa, app_a, oa),
                                             ("pod-b", "b", pb, app_b, ob)):
                token = tmp_path / f"{name}.token"
                token.write_text(await issue_token(cp.api, WorkloadInfo(name=name,
                                                                        namespace=NS)))
                pods.append({"name": name, "namespace": NS, "address": "127.0.0.1",
                             "serviceAccount": sa, "outboundPort": out,
                             "tokenFile": str(token), "labels": {"app": name[-1]},
                             "ports": [{"name": "http", "port": port, "targetPort": app}]})
            config = tmp_path / "node.yaml"
            config.write_text(json.dumps({"workloads": pods}))
            node = NodeAgentProcess(cp, tmp_path, config, tmp_path / "node-cache")
            await node.start()
            await eventually(lambda: _answers(oa, "b.shop", "b"), timeout=30, interval=0.1)
            await eventually(lambda: _answers(ob, "a.shop", "a"), timeout=10, interval=0.1)
            ident = node.cache / "identity"
            await eventually(lambda: (ident / "shop.pod-b.json").exists(), timeout=10)
            assert {p.name for p in ident.iterdir()} == {"shop.pod-a.json", "shop.pod-b.json",
                                                         "shop.pod-a.index"}  # (ADR 0126)
            assert _mode(ident) == 0o700
            assert all(_mode(p) == 0o600 for p in ident.iterdir())
            # pod-b's identity is lost (and it gets a new token for when the control plane
            # is back: its first one is spent).
            (tmp_path / "pod-b.token").write_text(await issue_token(
                cp.api, WorkloadInfo(name="pod-b", namespace=NS)))
            cp.kill()
            await node.stop()
            (ident / "shop.pod-b.json").unlink()
            mark = len(node.log())
            await node.start()
            await eventually(lambda: "until the control plane answers" in node.log()[mark:],
                             timeout=20, interval=0.1)
            text = node.log()[mark:]
            assert "served without workload shop/pod-b (its listeners wait for the control " \
                   "plane): no certificate of shop/pod-b is cached at" in text, text[-3000:]
            # pod-a: served, over mTLS with its own cached identity (a call to itself through
            # the mesh: its inbound side sees its SPIFFE ID).
            await eventually(lambda: _answers(oa, "a.shop", "a"), timeout=10, interval=0.1)
            assert await node.metric(
                "istio_requests_total", reporter="destination", destination_workload="pod-a",
                source_principal="spiffe://cluster.local/ns/shop/sa/a",
                connection_security_policy="mutual_tls") >= 1
            # pod-b: nothing of it is bound until the control plane answers.
            assert await nothing_listens(pb) and await nothing_listens(ob)

            cp.start()
            await cp.wait_ready()
            await eventually(lambda: _answers(ob, "a.shop", "a"), timeout=30, interval=0.1)
            await eventually(lambda: _answers(oa, "b.shop", "b"), timeout=10, interval=0.1)
            await eventually(lambda: (ident / "shop.pod-b.json").exists(), timeout=10)
            ps = await cp.proxies()
            assert ps[f"{NS}/pod-a"]["connected"] and ps[f"{NS}/pod-b"]["connected"], ps
    finally:
        if node is not None:
            await node.stop()
        cp.kill()


@pytest.mark.timeout(150)
async def test_an_identity_the_control_plane_refuses_is_dropped_for_the_bootstrap_token(
        tmp_path: Path) -> None:
    """A cache directory from another mesh (same names, same trust domain, another CA; or a
    root the mesh has since retired): its control plane does not verify with the bundle kept,
    so the proxy verifies it by its bootstrap token's pin; that control plane refuses the
    cached certificate, and the proxy proves itself with the token instead.  Before, the proxy
    stayed locked out: the kept bundle replaced the pin, and the refused certificate was
    presented again at every attempt."""
    cache = tmp_path / "api-cache"
    other = ControlPlaneProcess(f"sqlite:{tmp_path / 'other.db'}", tmp_path)
    cp = ControlPlaneProcess(f"sqlite:{tmp_path / 'cp.db'}", tmp_path)
    car: SidecarProcess | None = None
    try:
        async with named_origin("api") as app:
            port = free_port()
            docs = [_mesh(), _service("api", app="api")]
            other.start()
            await other.wait_ready()
            car = SidecarProcess(other.api, other.stream_port, "api-0", tmp_path,
                                 ports=[("http", port, app)], labels={"app": "api"},
                                 cache_dir=cache)
            ports = [{"name": "http", "port": port, "targetPort": app}]
            wl = _workload("api-0", "api", car.outbound_port, ports, app="api")
            status, body = await apply(other.api, *docs, wl)
            assert status == 200, body
            await car.start()
            await car.wait_ready()
            path = cache / "identity" / f"{NS}.api-0.json"
            await eventually(path.exists, timeout=10)
            theirs = json.loads(path.read_text())
            await _stop(car)
            other.kill()

            cp.start()
            await cp.wait_ready()
            status, body = await apply(cp.api, *docs, wl)
            assert status == 200, body
            car.api, car.stream_port = cp.api, cp.stream_port
            mark = len(car.log())
            await car.start()  # (a token of this mesh)

            async def admitted() -> bool:
                p = (await cp.proxies()).get(f"{NS}/api-0", {})
                return bool(p.get("connected") and p.get("ackedVersion")
                            and p["ackedVersion"] == p.get("desiredVersion"))

            await eventually(admitted, timeout=30, interval=0.2)
            text = car.log()[mark:]
            assert "not verified by the mesh bundle held" in text
            assert "the control plane refused the cached certificate of shop/api-0" in text
            assert "workload certificate issued, valid until" in text
            ours = json.loads(path.read_text())
            assert ours["trust_bundle"] != theirs["trust_bundle"]
            assert ours["certificate"] != theirs["certificate"]
    finally:
        if car is not None:
            car.kill()
        other.kill()
        cp.kill()
