"""TLS listeners choose the driver by ALPN (h2 or HTTP/1.1), and HTTP/2 clusters speak TLS with
ALPN h2 upstream."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from tests.support.certs import self_signed
from tests.support.h2peers import H2Client
from tests.support.proxy import running_proxy, simple_config


def tls_config(origin: int, tmp_path: Path) -> dict[str, Any]:
    crt, key = self_signed(tmp_path)
    cfg = simple_config(origin, protocol="http2")
    cfg["listeners"][0]["tls"] = {"cert_file": crt, "key_file": key, "alpn": ["h2", "http/1.1"]}
    return cfg


async def _curl(*argv: str) -> tuple[str, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-k", "-m", "20", "-w", "\n%{http_version}", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    body, _, version = out.decode().rpartition("\n")
    return version, json.loads(body)


@pytest.mark.both_loops  # the driver swap uses transport.set_protocol: check both loops
async def test_alpn_h2_and_http11_on_one_tls_listener(origin: int, tmp_path: Path) -> None:
    async with running_proxy(tls_config(origin, tmp_path)) as p:
        url = f"https://127.0.0.1:{p.port()}/echo"
        version, body = await _curl("--http2", url)
        assert version == "2"
        assert body["headers"]["x-forwarded-proto"] == "https"
        version, body = await _curl("--http1.1", url)
        assert version == "1.1"
        assert body["headers"]["x-forwarded-proto"] == "https"
        assert p.metric("tulle_proxy_requests_total", response_code="200") == 2


async def test_h2_cluster_over_tls_with_alpn(origin: int, tmp_path: Path) -> None:
    # client --h2c--> [out] --TLS+h2--> [tls] --HTTP/1--> origin, all in one proxy.
    cfg = tls_config(origin, tmp_path)
    cfg["listeners"][0]["name"] = "tls"
    async with running_proxy(cfg) as p:
        tls_port = p.port("tls")
        cfg["listeners"].append({"name": "out", "port": 0, "protocol": "http2",
                                 "cluster": "via-tls"})
        cfg["clusters"].append({"name": "via-tls", "protocol": "http2",
                                "tls": {"server_name": "localhost"},
                                "endpoints": [{"address": "127.0.0.1", "port": tls_port}]})
        await p.apply(cfg)
        c = await H2Client.connect(p.port("out"))
        r = await c.request("GET", "/echo")
        assert r.status == 200
        body = r.json()
        assert body["headers"]["x-forwarded-proto"] == "http"  # set by the first hop only
        assert body["headers"]["x-forwarded-for"] == "127.0.0.1, 127.0.0.1"
        # The inner hop went through the TLS listener (the pool insists on ALPN h2).
        assert p.metric("tulle_proxy_requests_total", listener="tls", response_code="200") == 1
        c.close()


async def test_h2_cluster_refuses_a_tls_upstream_without_alpn_h2(origin: int,
                                                                 tmp_path: Path) -> None:
    # The dial succeeds (TCP and TLS), but the upstream only speaks HTTP/1.1: the pool drops
    # the connection and the waiting request fails as a connect failure, nothing forwarded.
    crt, key = self_signed(tmp_path)
    cfg = simple_config(origin)
    cfg["listeners"][0].update(name="tls", tls={"cert_file": crt, "key_file": key,
                                                "alpn": ["http/1.1"]})
    async with running_proxy(cfg) as p:
        cfg["listeners"].append({"name": "out", "port": 0, "protocol": "http2",
                                 "cluster": "via-tls"})
        cfg["clusters"].append({"name": "via-tls", "protocol": "http2",
                                "tls": {"server_name": "localhost"},
                                "endpoints": [{"address": "127.0.0.1", "port": p.port("tls")}]})
        await p.apply(cfg)
        c = await H2Client.connect(p.port("out"))
        r = await c.request("GET", "/echo")
        assert r.status == 503
        assert b"cannot connect" in r.body and b"did not negotiate ALPN h2" in r.body
        assert p.metric("tulle_proxy_requests_total", listener="out", response_flags="UF") == 1
        assert p.metric("tulle_proxy_upstream_connect_failures_total", cluster="via-tls") == 1
        assert p.metric("tulle_proxy_requests_total", listener="tls") == 0
        # The listener still serves.
        r = await c.request("GET", "/echo")
        assert r.status == 503
        c.close()
