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


def _client_with_chain(ca: TestCA, chain_pem: str, key_pem: str,
                       **versions: ssl.TLSVersion) -> ssl.SSLContext:
    import os

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=ca.pem)
    for k, v in versions.items():
        setattr(ctx, k, v)
    fds = []
    for data in (chain_pem, key_pem):
        fd = os.memfd_create("t")
        os.write(fd, data.encode())
        fds.append(fd)
    ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
    for fd in fds:
        os.close(fd)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def test_a_workload_certificate_cannot_sign_another_identity() -> None:
    """A compromised workload signs itself a certificate for `sa/admin` with its own SVID's
    key and presents the chain [admin, its SVID]: the SVID is not a CA (basicConstraints
    CA:FALSE, as the mesh CA issues them), so the handshake fails."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ca = TestCA()
    leaf_pem, leaf_key_pem = ca.svid(CLIENT_ID)
    leaf = x509.load_pem_x509_certificate(leaf_pem.encode())
    leaf_key = serialization.load_pem_private_key(leaf_key_pem.encode(), None)
    assert isinstance(leaf_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    forged = (x509.CertificateBuilder().subject_name(x509.Name([]))
              .issuer_name(leaf.subject).public_key(key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=1))
              .not_valid_after(now + dt.timedelta(hours=1))
              .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(
                  "spiffe://mesh.local/ns/default/sa/admin")]), critical=True)
              .sign(leaf_key, hashes.SHA256()))
    chain = forged.public_bytes(serialization.Encoding.PEM).decode() + leaf_pem
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    async with named_origin("app") as app, \
            running_proxy(server_config(ca, app, "explicit")) as server:
        port = server.port("in")
        assert await request(port, _client_with_chain(ca, chain, key_pem)) == b""
        assert server.metric("tulle_proxy_protocol_errors_total",
                             kind="tls_client_certificate") == 1
        assert (await request(port, mtls_client(ca, CLIENT_ID))).startswith(b"HTTP/1.1 403")


async def test_tls_1_2_is_refused_where_the_mesh_asks_for_1_3() -> None:
    ca = TestCA()
    cert, key = ca.svid(CLIENT_ID)
    async with named_origin("app") as app, \
            running_proxy(server_config(ca, app, "explicit")) as server:
        port = server.port("in")
        old = _client_with_chain(ca, cert, key, maximum_version=ssl.TLSVersion.TLSv1_2)
        assert await request(port, old) == b""
        assert (await request(port, mtls_client(ca, CLIENT_ID))).startswith(b"HTTP/1.1 403")
