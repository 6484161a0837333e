"""A proxy's workload joins its Services' endpoints once the proxy serves (ADR 0116).

A real control plane and proxies speaking the stream by hand (`RawProxy`), so that what the
store says can be read between the hello and the ACK: a proxy announcing `serving-ack` is out
(`starting`) until it ACKs its first snapshot, or in at once when its hello names a version it
runs; one whose first snapshot it NACKs stays out, and says why; an older proxy (no
`serving-ack`) joins at its hello, as before."""

from __future__ import annotations

from typing import Any

from tests.integration.controlplane.test_negotiation import RawProxy, proxies
from tests.support.controlplane import apply, eventually, running_control_plane
from tests.support.proxy import free_port
from tests.support.resources import NS, service, workload

from tulle.cli.get import _connected, _proxy_state
from tulle.controlplane.main import ControlPlane
from tulle.controlplane.readiness import STARTING
from tulle.proxyconfig.features import SERVING_ACK, SUPPORTED
from tulle.proxyconfig.model import CONFIG_API_VERSION
from tulle.proxyconfig.stream import Ack, Hello, Nack, Snapshot, WorkloadInfo, encode

OLDER = [f for f in SUPPORTED if f != SERVING_ACK]


async def stored(cp: ControlPlane, name: str) -> dict[str, Any]:
    assert cp.store is not None
    obj = await cp.store.get("Workload", NS, name)
    return dict((obj.get("status") or {}).get("proxy") or {})


async def _declared(cp: ControlPlane, name: str) -> Hello:
    status, body = await apply(cp.api_url, workload(name, free_port(), 1, free_port(), app="api"),
                               service("api", app="api"))
    assert status == 200, body
    return Hello(workload=WorkloadInfo(name=name, namespace=NS, address="127.0.0.1"),
                 api_versions=[CONFIG_API_VERSION], features=list(SUPPORTED))


async def _snapshot(raw: RawProxy) -> Snapshot:
    while True:
        msg = await raw.next()
        assert msg is not None, "stream closed"
        if isinstance(msg, Snapshot):
            return msg


async def _state_is(cp: ControlPlane, name: str, state: str, reason: str = "") -> dict[str, Any]:
    async def check() -> bool:
        st = await stored(cp, name)
        return st.get("state") == state and (not reason or st.get("reason") == reason)

    await eventually(check, timeout=5)
    return await stored(cp, name)


async def test_a_starting_proxy_joins_at_its_first_ack_not_at_its_hello() -> None:
    """Before: `Connected` at the hello, while the proxy had not bound a listener yet (a
    restarted sidecar then failed 10-15 requests of 300 req/s, ADR 0113)."""
    async with running_control_plane() as cp:
        hello = await _declared(cp, "api-0")
        raw = await RawProxy.connect(cp.stream_port, hello, api=cp.api_url)
        try:
            snap = await _snapshot(raw)
            st = await _state_is(cp, "api-0", "Disconnected", STARTING)
            assert "starting" in _proxy_state(st) and "out of endpoints" in _proxy_state(st)
            shown = (await proxies(cp.api_url))["api-0"]
            assert shown["connected"] and not shown["serving"]
            assert _connected(shown) == "yes, starting"
            raw.writer.write(encode(Ack(version=snap.version)))
            st = await _state_is(cp, "api-0", "Connected")
            assert _proxy_state(st) == "connected"
            shown = (await proxies(cp.api_url))["api-0"]
            assert shown["serving"] and _connected(shown) == "yes"
        finally:
            raw.close()


async def test_a_proxy_that_nacks_its_first_snapshot_stays_out_and_says_why() -> None:
    async with running_control_plane() as cp:
        hello = await _declared(cp, "api-0")
        raw = await RawProxy.connect(cp.stream_port, hello, api=cp.api_url)
        try:
            snap = await _snapshot(raw)
            raw.writer.write(encode(Nack(version=snap.version, reason="cannot bind :80")))
            await _state_is(cp, "api-0", "Disconnected")
            await eventually(lambda: _reason_has(cp, "rejected its first config"), timeout=5)
            st = await stored(cp, "api-0")
            assert snap.version in st["reason"]
            assert _proxy_state(st).startswith("starting")
            shown = (await proxies(cp.api_url))["api-0"]
            assert _connected(shown) == "yes, starting"
            assert shown["lastNack"]["reason"] == "cannot bind :80"
        finally:
            raw.close()


async def test_a_proxy_serving_a_version_joins_at_its_hello() -> None:
    """Started from its disk cache, or back from another replica it kept serving through: it
    serves before any ACK of this session (it may get none: its version is current)."""
    async with running_control_plane() as cp:
        hello = await _declared(cp, "api-0")
        hello = Hello(workload=hello.workload, api_versions=hello.api_versions,
                      features=hello.features, last_version="cached-v1")
        raw = await RawProxy.connect(cp.stream_port, hello, api=cp.api_url)
        try:
            await _snapshot(raw)  # (not ACKed)
            await _state_is(cp, "api-0", "Connected")
            assert (await proxies(cp.api_url))["api-0"]["serving"]
        finally:
            raw.close()


async def test_an_older_proxy_joins_at_its_hello_as_before() -> None:
    async with running_control_plane() as cp:
        hello = await _declared(cp, "api-0")
        hello = Hello(workload=hello.workload, api_versions=hello.api_versions, features=OLDER)
        raw = await RawProxy.connect(cp.stream_port, hello, api=cp.api_url)
        try:
            await _snapshot(raw)  # (not ACKed)
            await _state_is(cp, "api-0", "Connected")
            assert _connected((await proxies(cp.api_url))["api-0"]) == "yes"
        finally:
            raw.close()


async def _reason_has(cp: ControlPlane, text: str) -> bool:
    return text in str((await stored(cp, "api-0")).get("reason"))
