"""`tulle ca rotate` under load (ADR 0035): a real control plane on 127.0.0.1, two proxies
admitted by bootstrap tokens and holding certificates from its CA, mTLS between them (chains
and clusters written by hand, referring to the injected `workload` identity and `mesh`
bundle), steady traffic through them while the real CLI takes every stage, and not one failed
request.  The client's cluster keeps no idle connection, so every request is a new TLS 1.3
handshake in which both sides verify each other against the bundle in force at that moment.

Then the attacks that fall on rotation: a certificate of the retired root is refused by the
server proxy (and by the stream), and the listener still serves.
"""

from __future__ import annotations

import asyncio
import functools
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from cryptography import x509
from tests.support.cli import tulle
from tests.support.controlplane import (
    SubscribedProxy,
    auth,
    eventually,
    named_origin,
    running_control_plane,
    subscribe,
)
from tests.support.proxy import free_port

from tulle.controlplane.ca.authority import CertificateAuthority
from tulle.controlplane.ca.keeper import PROGRESS_KIND
from tulle.controlplane.ca.spiffe import SpiffeId
from tulle.controlplane.main import ControlPlane
from tulle.controlplane.push.cache import ProxyKey
from tulle.dataplane.identity import WorkloadKey
from tulle.proxyconfig.features import SUPPORTED
from tulle.proxyconfig.model import ProxyConfig
from tulle.proxyconfig.stream import WorkloadInfo

NS = "shop"
SERVER_ID = f"spiffe://cluster.local/ns/{NS}/sa/server"
MTLS = {"identity": "workload", "trust_bundle": "mesh", "min_version": "1.3"}


def _server_cfg(in_port: int, app: int) -> ProxyConfig:
    return msgspec.convert({
        "version": "manual-server",
        "listeners": [{"name": "in", "port": in_port, "direction": "inbound",
                       "filter_chains": [{"name": "mtls", "match": {"transport": "tls"},
                                          "tls": MTLS, "route_table": "local"}]}],
        "route_tables": [{"name": "local", "virtual_hosts": [{"name": "any", "rules": [
            {"backends": [{"cluster": "app"}]}]}]}],
        "clusters": [{"name": "app", "endpoints": [{"address": "127.0.0.1", "port": app}]}],
    }, ProxyConfig)


def _client_cfg(out_port: int, server_in: int) -> ProxyConfig:
    return msgspec.convert({
        "version": "manual-client",
        "listeners": [{"name": "out", "port": out_port, "route_table": "rt"}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": [
            {"backends": [{"cluster": "server"}]}]}]}],
        "clusters": [{"name": "server", "max_idle_per_endpoint": 0,
                      "endpoints": [{"address": "127.0.0.1", "port": server_in}],
                      "tls": {**MTLS, "expected_spiffe_ids": [SERVER_ID]}}],
    }, ProxyConfig)


def _pin(cp: ControlPlane, manual: dict[ProxyKey, ProxyConfig]) -> None:
    """Serve `manual` configs to these proxies whatever the compiler makes (the compiler's
    automatic mTLS is another change; this test is about certificates, not compilation)."""
    cache = cp.cache
    real = cache.update

    def update(snapshots: dict[ProxyKey, ProxyConfig],
               keep: frozenset[ProxyKey] = frozenset()) -> int:
        mine = {k: v for k, v in snapshots.items() if k not in manual}
        return real(mine, keep | frozenset(manual))

    cache.update = update  # type: ignore[method-assign]
    for key, cfg in manual.items():
        cache.set(key, cfg)


@asynccontextmanager
async def two_proxies(cp: ControlPlane) -> AsyncIterator[tuple[SubscribedProxy, SubscribedProxy,
                                                               int, int]]:
    """(client proxy, server proxy, client's outbound port, server's inbound port)."""
    async with AsyncExitStack() as stack:
        app = await stack.enter_async_context(named_origin("app"))
        in_port, out_port = free_port(), free_port()
        _pin(cp, {(NS, "server"): _server_cfg(in_port, app),
                  (NS, "client"): _client_cfg(out_port, in_port)})
        proxies = []
        for name in ("server", "client"):
            w = WorkloadInfo(name=name, namespace=NS, address="127.0.0.1", service_account=name)
            p = await subscribe([cp.stream_port], w)
            stack.push_async_callback(p.stop)
            proxies.append(p)
        server, client = proxies
        await eventually(lambda: all(p.agent.held is not None and p.agent.current is not None
                                     for p in proxies), timeout=10)
        yield client, server, out_port, in_port


class Load:
    """Two workers sending requests one after another through the client proxy until
    stopped; every answer that is not 200 from the app is a failure, kept with its stage."""

    def __init__(self, cp: ControlPlane, port: int) -> None:
        self.cp, self.url = cp, f"http://127.0.0.1:{port}/load"
        self.ok: dict[str, int] = {}
        self.failed: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def stage(self) -> str:
        keeper = self.cp.ca_keeper
        assert keeper is not None and keeper.state is not None
        return keeper.state.stage or "idle"

    async def _worker(self) -> None:
        conn = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=conn) as s:
            while not self._stop.is_set():
                stage = self.stage()
                try:
                    async with s.get(self.url, timeout=aiohttp.ClientTimeout(total=10)) as r:
                        body = await r.text()
                        if r.status == 200 and json.loads(body)["name"] == "app":
                            self.ok[stage] = self.ok.get(stage, 0) + 1
                        else:
                            self.failed.append(f"{stage}: {r.status} {body[:200]}")
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.failed.append(f"{stage}: {exc!r}")

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._worker()) for _ in range(2)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


def _issued_by(chain_pem: str, ca: CertificateAuthority) -> bool:
    leaf = x509.load_pem_x509_certificates(chain_pem.encode())[0]
    try:
        leaf.verify_directly_issued_by(ca.cert)
    except Exception:  # noqa: BLE001 - any failure means "not issued by"
        return False
    return True


def _tls_client(ca: CertificateAuthority, trust: str) -> ssl.SSLContext:
    """A direct mTLS client with a certificate `ca` signs for spiffe://.../sa/client."""
    import os

    key = WorkloadKey()
    signed = ca.sign_csr(key.csr(NS, "client"), SpiffeId("cluster.local", NS, "client"),
                         "client")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(cadata=trust)
    fds = []
    for data in (signed.chain_pem, key.pem()):
        fd = os.memfd_create("t")
        os.write(fd, data.encode())
        fds.append(fd)
    try:
        ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
    finally:
        for fd in fds:
            os.close(fd)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def _raw_get(port: int, ctx: ssl.SSLContext) -> bytes:
    """One request straight to the server proxy over TLS; b"" when refused or reset."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    except (ssl.SSLError, ConnectionError):
        return b""
    try:
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        return await asyncio.wait_for(reader.read(), 10)
    except (ssl.SSLError, ConnectionError):
        return b""
    finally:
        writer.close()


async def _ca_status(api: str) -> dict[str, Any]:
    async with aiohttp.ClientSession(headers=auth(api)) as s, s.get(f"{api}/api/v1/ca") as r:
        assert r.status == 200
        return dict(await r.json())


async def test_rotation_under_load_fails_no_request_and_retires_the_old_root() -> None:
    async with running_control_plane() as cp, two_proxies(cp) as (client, server, out, in_):
        old = cp.ca
        assert old is not None
        old_root_pem = old.trust_bundle()[0]
        load = Load(cp, out)
        load.start()
        await eventually(lambda: load.ok.get("idle", 0) >= 5, timeout=10)

        code, stdout, stderr = await tulle(cp.api_url, "ca", "rotate", "--timeout", "60s")
        assert code == 0, stderr
        for stage in ("add-root", "reissue", "retire", "idle"):
            assert f"stage {stage}:" in stdout, stdout

        await eventually(lambda: load.ok.get("idle", 0) >= 10, timeout=10)  # after, too
        await load.stop()
        assert load.failed == [], load.failed[:5]
        assert sum(load.ok.values()) >= 20, load.ok

        new = cp.ca
        assert new is not None and new.root != old.root
        for p in (client, server):
            held = p.agent.held
            assert held is not None
            assert _issued_by(held.cert.cert_chain, new)
            assert held.bundle.ca_pems == new.trust_bundle()
            running = p.server.config
            assert running is not None
            assert [b.ca_pems for b in running.trust_bundles] == [new.trust_bundle()]
        st = await _ca_status(cp.api_url)
        assert st["stage"] == "idle" and len(st["roots"]) == 1 and st["notMoved"] == []

        # Attack: a certificate of the retired root.  The server proxy refuses the handshake
        # (it no longer trusts that root); the same client with a new-root certificate passes,
        # so the refusal is about the root and the listener still serves.
        refused = await _raw_get(in_, _tls_client(old, new.trust_bundle()[0]))
        assert refused == b""
        served = await _raw_get(in_, _tls_client(new, new.trust_bundle()[0]))
        assert served.startswith(b"HTTP/1.1 200"), served[:100]
        assert old_root_pem not in new.trust_bundle()


async def test_rotation_is_staged_resumable_and_reported() -> None:
    """`--step` takes one stage at a time; `--status` names the stage and (while a proxy has
    not confirmed) who holds it up; a second start is refused; `tulle check` warns that a
    rotation is half done."""
    async with running_control_plane() as cp, two_proxies(cp) as (client, server, _, _i):
        code, out, err = await tulle(cp.api_url, "ca", "rotate", "--step")
        assert code == 0, err
        assert "stage add-root:" in out
        st = await _ca_status(cp.api_url)
        assert st["stage"] == "add-root" and len(st["roots"]) == 2
        # Both proxies confirm the two-root bundle by themselves (TrustUpdate / TrustAck).
        await eventually(lambda: all(len(p.agent.held.bundle.ca_pems) == 2  # type: ignore[union-attr]
                                     for p in (client, server)))
        await eventually(lambda: _can_advance(cp.api_url), timeout=5)
        code, out, _ = await tulle(cp.api_url, "ca", "rotate", "--status")
        assert code == 0 and "stage:        add-root" in out and "takes the next stage" in out

        code, out, _ = await tulle(cp.api_url, "check", "-o", "json")
        findings = json.loads(out)["findings"]
        assert code == 0
        assert [f["code"] for f in findings] == ["RotationInProgress"]
        assert findings[0]["severity"] == "warning" and "add-root" in findings[0]["message"]

        # A rotation in progress cannot be started again (nothing changes).
        async with aiohttp.ClientSession(headers=auth(cp.api_url)) as s, \
                s.post(f"{cp.api_url}/api/v1/ca/rotation", json={}) as r:
            assert r.status == 409 and "already at stage add-root" in await r.text()

        # Resuming carries on from the stored stage to the end.
        code, out, err = await tulle(cp.api_url, "ca", "rotate", "--timeout", "30s")
        assert code == 0, err
        assert "resuming the rotation at stage add-root" in out
        assert "stage idle:" in out
        code, out, _ = await tulle(cp.api_url, "get", "proxies", "-n", NS)
        assert "CERT-EXPIRES" in out.splitlines()[0]


async def _can_advance(api: str) -> bool:
    return bool((await _ca_status(api))["canAdvance"])


async def test_a_stage_waits_for_a_proxy_that_has_not_moved() -> None:
    """A proxy that does not take trust updates (an older build) holds the rotation at
    add-root, named with the reason; advancing is refused (409) and changes nothing."""
    async with running_control_plane() as cp:
        w = WorkloadInfo(name="old", namespace=NS, address="127.0.0.1", service_account="old")
        older = await subscribe([cp.stream_port], w,
                                features=[f for f in SUPPORTED if f != "ca-rotation"])
        try:
            await eventually(lambda: older.agent.held is not None)
            code, _, err = await tulle(cp.api_url, "ca", "rotate", "--step")
            assert code == 0, err
            st = await _ca_status(cp.api_url)
            assert [p["proxy"] for p in st["notMoved"]] == [f"{NS}/old"]
            assert "does not take trust updates" in st["notMoved"][0]["reason"]
            async with aiohttp.ClientSession(headers=auth(cp.api_url)) as s, s.post(
                    f"{cp.api_url}/api/v1/ca/rotation/advance") as r:
                assert r.status == 409
                assert f"{NS}/old not moved yet" in await r.text()
            assert (await _ca_status(cp.api_url))["stage"] == "add-root"
            code, out, err = await tulle(cp.api_url, "ca", "rotate", "--timeout", "1s")
            assert code == 1 and "have not moved within the timeout" in err
        finally:
            await older.stop()


async def test_replicas_share_the_rotation_and_wait_for_each_others_proxies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two replicas on one SQLite store: the stage taken through A reaches B's proxies (B
    follows the CA record), traffic from B's client to A's server fails no request, and A
    counts B's proxies before advancing (B publishes their progress)."""
    from tulle.controlplane import main as cp_main
    from tulle.controlplane.store.factory import open_store

    monkeypatch.setattr(cp_main, "open_store", functools.partial(open_store, poll_interval=0.05))
    store = f"sqlite:{tmp_path / 'cp.db'}"
    async with running_control_plane(store, instance="a") as a, \
            running_control_plane(store, instance="b") as b, AsyncExitStack() as stack:
        app = await stack.enter_async_context(named_origin("app"))
        in_port, out_port = free_port(), free_port()
        _pin(a, {(NS, "server"): _server_cfg(in_port, app)})
        _pin(b, {(NS, "client"): _client_cfg(out_port, in_port)})
        proxies = []
        for name, cp in (("server", a), ("client", b)):
            w = WorkloadInfo(name=name, namespace=NS, address="127.0.0.1", service_account=name)
            p = await subscribe([cp.stream_port], w)
            stack.push_async_callback(p.stop)
            proxies.append(p)
        w = WorkloadInfo(name="old", namespace=NS, address="127.0.0.1", service_account="old")
        older = await subscribe([b.stream_port], w, features=[
            f for f in SUPPORTED if f != "ca-rotation"])
        stack.push_async_callback(older.stop)
        await eventually(lambda: all(p.agent.current is not None for p in proxies)
                         and older.agent.held is not None, timeout=10)

        load = Load(a, out_port)
        load.start()
        await eventually(lambda: load.ok.get("idle", 0) >= 5, timeout=10)
        code, _, err = await tulle(a.api_url, "ca", "rotate", "--step")
        assert code == 0, err
        # A sees B's older proxy holding the stage up (B's published progress) ...
        await eventually(lambda: _not_moved(a.api_url, f"{NS}/old"), timeout=10)
        await older.stop()  # ... until it goes away; then the rotation completes.
        code, out, err = await tulle(a.api_url, "ca", "rotate", "--timeout", "60s")
        assert code == 0, err
        assert "stage idle:" in out
        await eventually(lambda: b.ca_keeper is not None and b.ca_keeper.state is not None
                         and b.ca_keeper.state.stage == "" and b.ca is not None
                         and a.ca is not None and b.ca.cert == a.ca.cert)
        await eventually(lambda: load.ok.get("idle", 0) >= 10, timeout=10)
        await load.stop()
        assert load.failed == [], load.failed[:5]
        assert a.ca is not None
        for p in proxies:
            assert p.agent.held is not None and _issued_by(p.agent.held.cert.cert_chain, a.ca)

        async def no_progress_records() -> bool:  # both replicas tidied up after the rotation
            assert a.store is not None
            return (await a.store.list(PROGRESS_KIND))[0] == []

        await eventually(no_progress_records)


async def _not_moved(api: str, name: str) -> bool:
    return name in [p["proxy"] for p in (await _ca_status(api))["notMoved"]]


async def test_a_proxy_that_missed_add_root_can_still_reach_the_stream_during_reissue() -> None:
    """A proxy off its stream through `add-root` trusts the old root only.  During `reissue`
    the stream is still served by the old CA, so it verifies the control plane, is admitted
    with its old certificate and is sent the two-root bundle with `renew` (the stream was
    served by the new CA: it refused it, and was left behind for good)."""
    import time

    from tests.support.controlplane import issue_token

    from tulle.dataplane.stream_tls import StreamTrust
    from tulle.proxyconfig.model import CONFIG_API_VERSION
    from tulle.proxyconfig.stream import Certificate, FrameDecoder, Hello, TrustUpdate, encode

    async with running_control_plane() as cp:
        assert cp.ca_keeper is not None and cp.ca_keeper.state is not None
        old_root = cp.ca_keeper.state.bundle()[0]
        w = WorkloadInfo(name="away-0", namespace=NS, address="127.0.0.1")
        key = WorkloadKey()
        token = await issue_token(cp.api_url, w)
        trust = StreamTrust(ca_pems=[old_root])
        reader, writer = await trust.connect("127.0.0.1", cp.stream_port)
        writer.write(encode(Hello(workload=w, api_versions=[CONFIG_API_VERSION],
                                  features=list(SUPPORTED), token=token,
                                  csr=key.csr(NS, "away-0"))))
        dec = FrameDecoder()
        msgs = dec.feed(await asyncio.wait_for(reader.read(65536), 5))
        cert = next(m for m in msgs if isinstance(m, Certificate))
        writer.close()  # off its stream from here
        for _ in range(2):  # add-root, then reissue (no proxy connected: nothing to wait for)
            code, out, err = await tulle(cp.api_url, "ca", "rotate", "--step")
            assert code == 0, err
        assert (await _ca_status(cp.api_url))["stage"] == "reissue"

        reader, writer = await trust.connect("127.0.0.1", cp.stream_port)  # old root only
        try:
            now = int(time.time())  # noqa: TID251 - wall clock: the proof names a moment
            writer.write(encode(Hello(workload=w, api_versions=[CONFIG_API_VERSION],
                                      features=list(SUPPORTED), certificate=cert.cert_chain,
                                      proof_time=now, proof=key.proof(NS, "away-0", now))))
            got: list[Any] = []
            while not any(isinstance(m, TrustUpdate) for m in got):
                data = await asyncio.wait_for(reader.read(65536), 5)
                assert data, got
                got += dec.feed(data)
            update = next(m for m in got if isinstance(m, TrustUpdate))
            assert update.renew and len(update.trust_bundle) == 2
        finally:
            writer.close()
