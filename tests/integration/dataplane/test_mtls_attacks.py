"""Attack review A1 (issue 9): a mesh peer with a valid certificate tries to get past the
server proxy's HTTP authorization through the TLS layer.  Real proxies, real TLS 1.3; only the
kernel's SO_ORIGINAL_DST answer is stood in for (as in test_filter_chains_transparent.py)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest
from tests.integration.dataplane.test_mtls import CLIENT_ID, MTLS, SERVER_ID, mtls_client
from tests.support.ca import TestCA
from tests.support.controlplane import named_origin
from tests.support.proxy import running_proxy

from tulle.dataplane.listeners import detect

DENY_ALL = {"type": "Authorization", "policies": [
    {"name": "shop/deny-all", "action": "ALLOW", "rules": []}]}


def server_config(ca: TestCA, app: int, mode: str) -> dict[str, Any]:
    """An inbound HTTP port behind mTLS whose route denies everything (an ALLOW policy
    without rules)."""
    return {
        "listeners": [{"name": "in", "port": 0, "direction": "inbound", "mode": mode,
                       "filter_chains": [{"name": "mtls", "match": {"transport": "tls"},
                                          "tls": MTLS, "route_table": "local"}]}],
        "route_tables": [{"name": "local", "virtual_hosts": [{"name": "any", "rules": [
            {"backends": [{"cluster": "app"}], "filters": [DENY_ALL]}]}]}],
        "clusters": [{"name": "app", "endpoints": [{"address": "127.0.0.1", "port": app}]}],
        "identities": [ca.identity("workload", SERVER_ID)],
        "trust_bundles": [ca.bundle("mesh")],
    }


async def request(port: int, ctx: ssl.SSLContext) -> bytes:
    """One HTTP/1.1 request over TLS; the status line (b"" when closed or reset)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    except (ssl.SSLError, ConnectionError):
        return b""
    try:
        writer.write(b"GET /admin HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n")
        return (await asyncio.wait_for(reader.readline(), 5)).strip()
    except (ssl.SSLError, ConnectionError):
        return b""
    finally:
        writer.close()


@pytest.mark.parametrize("mode", ["explicit", "transparent"])
async def test_alpn_tulle_tcp_does_not_skip_http_authorization(
        mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = TestCA()
    async with named_origin("app") as app:
        monkeypatch.setattr(detect, "original_destination", lambda sock: ("127.0.0.1", app))
        async with running_proxy(server_config(ca, app, mode)) as server:
            port = server.port("in")
            http = mtls_client(ca, CLIENT_ID)
            assert (await request(port, http)).startswith(b"HTTP/1.1 403")
            tcp = mtls_client(ca, CLIENT_ID)
            tcp.set_alpn_protocols(["tulle-tcp"])
            got = await request(port, tcp)
            assert not got.startswith(b"HTTP/1.1 200"), got
            assert got == b""
            assert server.metric("tulle_proxy_protocol_errors_total", kind="tls_alpn") == 1
            assert (await request(port, http)).startswith(b"HTTP/1.1 403")  # still serving
