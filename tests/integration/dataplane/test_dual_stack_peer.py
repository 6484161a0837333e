"""An IPv4 client of a dual-stack listener (`::`, IPv6-only off) is its IPv4 address to every
reader of its connection's facts (ADR 0093): `x-forwarded-for`, the access log, a per-client
rate limit's key.  The kernel reports the peer as `::ffff:127.0.0.1`; before ADR 0093 the
origin was told that, and one client had two rate-limit keys by the socket it came in on."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from tests.integration.dataplane.test_access_log import _run
from tests.support.logsink import log_config, read_records
from tests.support.proxy import running_proxy, simple_config
from tests.support.rawhttp import RawClient
from tests.support.recorder import echo_target, recording_origin

pytestmark = pytest.mark.skipif(not socket.has_ipv6, reason="this Python has no IPv6 sockets")


def dual_stack(origin: int, log: Path, protocol: str = "http1") -> dict[str, Any]:
    cfg = simple_config(origin, protocol=protocol)
    cfg["listeners"][0]["address"] = "::"
    cfg["telemetry"] = {"access_log": log_config(log)}
    return cfg


async def test_an_ipv4_client_of_a_dual_stack_http1_listener_is_its_ipv4_address(
        tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    async with recording_origin(echo_target) as origin, \
            running_proxy(dual_stack(origin.port, log)) as p:
        client = await RawClient.connect(p.port(), host="127.0.0.1")
        try:
            r = await client.request("GET", "/a", headers={"x-forwarded-for": "10.9.9.9"})
        finally:
            client.close()
        assert r.status == 200
        (rec,) = await read_records(log, 1)
    (seen,) = origin.requests
    assert seen.header(b"x-forwarded-for") == b"10.9.9.9, 127.0.0.1"
    assert rec["downstream_remote_address"].startswith("127.0.0.1:")
    assert rec["x_forwarded_for"] == "10.9.9.9, 127.0.0.1"


async def test_an_ipv4_client_of_a_dual_stack_http2_listener_is_its_ipv4_address(
        tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    async with recording_origin(echo_target) as origin, \
            running_proxy(dual_stack(origin.port, log, protocol="http2")) as p:
        rc, _, err = await _run("curl", "-sS", "--http2-prior-knowledge", "-m", "20",
                                f"http://127.0.0.1:{p.port()}/b")
        assert rc == 0, err
        (rec,) = await read_records(log, 1)
    (seen,) = origin.requests
    assert seen.header(b"x-forwarded-for") == b"127.0.0.1"
    assert rec["downstream_remote_address"].startswith("127.0.0.1:")


async def test_an_ipv6_client_keeps_its_ipv6_address(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    async with recording_origin(echo_target) as origin, \
            running_proxy(dual_stack(origin.port, log)) as p:
        client = await RawClient.connect(p.port(), host="::1")
        try:
            assert (await client.request("GET", "/c")).status == 200
        finally:
            client.close()
        (rec,) = await read_records(log, 1)
    (seen,) = origin.requests
    assert seen.header(b"x-forwarded-for") == b"::1"
    assert rec["downstream_remote_address"].startswith("[::1]:")
