"""Second zero-trust audit on the wire (after ADR 0096): client-side impostor servers on the
HTTP/2 and gRPC paths, and certificates an inbound mTLS listener should not take as a SPIFFE
identity.  Real proxies on loopback, raw TLS peers that record the bytes they receive after
the handshake, certificates made by hand and signed by the mesh's own test root.

Each test failed on the code it was written against (the defect its docstring names) and
passes once the defect is fixed."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from tests.integration.dataplane.test_mtls import MTLS, SERVER_ID, client_config
from tests.support.ca import TestCA, _pem_key, server_context
from tests.support.grpc_peers import unary
from tests.support.proxy import running_proxy

IMPOSTOR_ID = "spiffe://mesh.local/ns/default/sa/impostor"


# -- Client side: an impostor server with a valid mesh certificate of another account -----------

@dataclass
class Impostor:
    port: int = 0
    received: list[bytearray] = field(default_factory=list)
    """Per accepted connection, every application byte it received after the handshake."""


@contextlib.asynccontextmanager
async def impostor(ca: TestCA, alpn: list[str]) -> AsyncIterator[Impostor]:
    """A TLS 1.3 server at the endpoint's address holding a genuine mesh SVID -- of another
    service account than the one the destination expects -- that requires a client
    certificate (as a mesh sidecar does) and records what it is sent."""
    cert, key = ca.svid(IMPOSTOR_ID)
    ctx = server_context(cert + ca.pem, key)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca.pem)
    ctx.set_alpn_protocols(alpn)
    imp = Impostor()

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        buf = bytearray()
        imp.received.append(buf)
        try:
            while data := await asyncio.wait_for(r.read(65536), 5):
                buf += data
        except (TimeoutError, ConnectionError, ssl.SSLError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0, ssl=ctx)
    imp.port = server.sockets[0].getsockname()[1]
    try:
        yield imp
    finally:
        server.close()


async def _http1_through(port: int) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /orders?token=abc HTTP/1.1\r\nhost: api\r\nauthorization: Bearer s3cr3t\r\n"
            b"connection: close\r\n\r\n")
    try:
        return await asyncio.wait_for(r.read(), 10)
    finally:
        w.close()


def _grpc_through(port: int) -> grpc.StatusCode | None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        try:
            unary(ch, b"secret payload")
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return None


@pytest.mark.parametrize("caller", ["http1_to_h2_cluster", "grpc"])
async def test_an_impostor_h2_server_is_sent_nothing_before_its_identity_is_checked(
        caller: str) -> None:
    """DEFECT: the HTTP/2 pool writes the client connection preface, its SETTINGS and a
    WINDOW_UPDATE to a server whose SPIFFE ID is not one the destination expects: the
    dialler (`upstream/connect.dial_transport`) runs `peer_check` only after
    `loop.create_connection` has returned, and asyncio calls the protocol's
    `connection_made` -- where `H2UpConnection` writes its preface
    (`upstream/http2.py`) -- as soon as the handshake completes, before that.  The request
    itself is refused (503 UF, `peer_identity_rejected` counted), but the impostor has been
    spoken to.  (HTTP/1 and the `tulle-tcp` relay write nothing in `connection_made`: the
    same impostor received 0 bytes from them.)  The same ordering lets any bytes the server
    sends with its handshake reach the copy relay's `data_received` -- and so the
    downstream client -- before the check.

    Expected (ADR 0030: "refuses a server whose SPIFFE ID is not expected"; Envoy checks
    the SAN inside certificate validation, so a mismatch fails the handshake): nothing of the
    application protocol is written to a server before its identity is accepted."""
    ca = TestCA()
    async with impostor(ca, ["h2"]) as imp, running_proxy(
            client_config(ca, imp.port, protocol="http2")) as p:
        port = p.port("out")
        if caller == "grpc":
            code = await asyncio.to_thread(_grpc_through, port)
            assert code is grpc.StatusCode.UNAVAILABLE
        else:
            got = await _http1_through(port)
            assert got.startswith(b"HTTP/1.1 503"), got[:200]
            assert b"is not one expected" in got
        assert p.metric("tulle_proxy_upstream_peer_identity_rejected_total",
                        cluster="mesh") >= 1
        await asyncio.sleep(0.3)  # let the impostor record what reached it
        assert imp.received, "the client proxy never dialled the impostor"
        sent = [bytes(b) for b in imp.received if b]
        assert not sent, f"the impostor received {[s[:64] for s in sent]!r}"


# -- Inbound: certificates that are no X509-SVID ------------------------------------------------

API = "spiffe://mesh.local/ns/shop/sa/api"
TD = ["mesh.local"]


def _leaf(ca: TestCA, uri: str, *, ca_flag: bool = False,
          digital_signature: bool = True) -> tuple[str, str]:
    """A leaf the test root signs for `uri`, as `TestCA.svid` makes them but for what is asked
    otherwise (the CA flag, the key usage)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([])).issuer_name(ca.cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
                       critical=True)
        .add_extension(x509.BasicConstraints(ca=ca_flag, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=digital_signature, content_commitment=False,
            key_encipherment=False, data_encipherment=False,
            key_agreement=not digital_signature, key_cert_sign=ca_flag, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key)


def _client(ca: TestCA, cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=ca.pem)
    fds = []
    for data in (cert, key):
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


def _policy(name: str, action: str, source: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Authorization", "policies": [
        {"name": name, "action": action, "rules": [{"sources": [source]}]}]}


def _rule(prefix: str, policy: dict[str, Any] | None) -> dict[str, Any]:
    rule: dict[str, Any] = {"matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                            "backends": [{"cluster": "app"}]}
    if policy is not None:
        rule["filters"] = [policy]
    return rule


def inbound_config(ca: TestCA, app: int) -> dict[str, Any]:
    """A STRICT inbound port as the compiler renders one (ADR 0033), whose route table has a
    rule per kind of source rule, each with `trust_domains` as the compiler writes them
    (ADR 0096): `/exact` (an exact principal), `/sa` (`serviceAccounts: shop/api`),
    `/authenticated` (`namespaces: ["*"]`, any authenticated peer), `/deny-api` (a DENY on
    `shop/api`), `/open` (no policy)."""
    rules = [
        _rule("/exact", _policy("shop/exact", "ALLOW", {"principals": [API]})),
        _rule("/sa", _policy("shop/sa", "ALLOW", {"service_accounts": ["shop/api"],
                                                  "trust_domains": TD})),
        _rule("/authenticated", _policy("shop/authenticated", "ALLOW", {
            "namespaces": ["*"], "trust_domains": TD})),
        _rule("/deny-api", _policy("shop/deny-api", "DENY", {"service_accounts": ["shop/api"],
                                                             "trust_domains": TD})),
        _rule("/open", None),
    ]
    return {
        "admin": {"port": 0},
        "listeners": [{"name": "in", "port": 0, "direction": "inbound", "filter_chains": [
            {"name": "mtls", "match": {"transport": "tls"}, "tls": MTLS,
             "route_table": "local"}]}],
        "route_tables": [{"name": "local", "virtual_hosts": [{"name": "any", "rules": rules}]}],
        "clusters": [{"name": "app", "endpoints": [{"address": "127.0.0.1", "port": app}]}],
        "identities": [ca.identity("workload", SERVER_ID)],
        "trust_bundles": [ca.bundle("mesh")],
    }


@dataclass
class HeadRecorder:
    port: int = 0
    heads: list[bytes] = field(default_factory=list)


@contextlib.asynccontextmanager
async def head_recorder() -> AsyncIterator[HeadRecorder]:
    """The application: records each request head, answers 200 `ok`."""
    rec = HeadRecorder()

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            rec.heads.append(await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5))
            w.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            await w.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            w.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    rec.port = server.sockets[0].getsockname()[1]
    try:
        yield rec
    finally:
        server.close()


async def _status(port: int, ctx: ssl.SSLContext, path: str) -> int:
    """The status of one request over mTLS straight to the inbound port; 0 when the
    connection was closed or refused without one."""
    try:
        r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    except (ssl.SSLError, ConnectionError):
        return 0
    try:
        w.write(f"GET {path} HTTP/1.1\r\nhost: api\r\nconnection: close\r\n\r\n".encode())
        got = await asyncio.wait_for(r.read(), 10)
    except (ssl.SSLError, ConnectionError):
        return 0
    finally:
        w.close()
    return int(got.split(b" ", 2)[1]) if got.startswith(b"HTTP/1.1 ") else 0


def _client_cert_headers(heads: list[bytes]) -> list[bytes]:
    return [line for h in heads for line in h.split(b"\r\n")
            if line.lower().startswith(b"x-forwarded-client-cert")]


async def _served_as(ca: TestCA, cert: str, key: str) -> tuple[dict[str, int], list[bytes]]:
    async with head_recorder() as app, running_proxy(inbound_config(ca, app.port)) as p:
        port = p.port("in")
        statuses = {path: await _status(port, _client(ca, cert, key), path)
                    for path in ("/exact", "/sa", "/authenticated", "/deny-api", "/open")}
        return statuses, _client_cert_headers(app.heads)


async def test_the_control_a_genuine_svid() -> None:
    """The control for the two tests below: a well-formed SVID of shop/api passes every ALLOW
    rule, meets the DENY, and the application is told who called."""
    ca = TestCA()
    statuses, xfcc = await _served_as(ca, *ca.svid(API))
    assert statuses == {"/exact": 200, "/sa": 200, "/authenticated": 200, "/deny-api": 403,
                        "/open": 200}
    assert xfcc and all(line.endswith(b"URI=" + API.encode()) for line in xfcc)


@pytest.mark.parametrize("uri", [
    "spiffe://mesh.local/ns/shop/sa/api/",           # trailing slash (an empty segment)
    "spiffe://mesh.local/ns/shop/sa/%61pi",          # percent-encoding
    "spiffe://mesh.local/ns/shop/sa/x/../api",       # dot segments
    "spiffe://mesh.local/ns/./sa/api",
    "spiffe://MESH.LOCAL/ns/shop/sa/api",            # uppercase trust domain
    "spiffe://mesh.local:443/ns/shop/sa/api",        # a port
    "spiffe://a@mesh.local/ns/shop/sa/api",          # userinfo
    "spiffe://mesh.local/ns/shop/sa/api?x=1",        # a query
])
async def test_a_uri_san_that_is_no_valid_spiffe_id_is_no_identity(uri: str) -> None:
    """DEFECT: `security/spiffe.spiffe_id` takes any URI SAN that starts with `spiffe://` as
    the peer's identity, never checking it is a SPIFFE ID.  A certificate from a CA in the
    bundle naming `spiffe://mesh.local/ns/shop/sa/%61pi`, `.../sa/api/`, `.../sa/x/../api`,
    `spiffe://MESH.LOCAL/...`, `spiffe://mesh.local:443/...` and the like is served as an
    authenticated caller: a `namespaces: ["*"]` rule ("any authenticated peer") admits most
    of them, a `namespaces: [shop]` rule admits the percent-encoded and query forms, the DENY
    on `serviceAccounts: [shop/api]` lets every one of them through (for `%61pi`, which an
    application decoding the URI reads as shop/api), and the application is handed the string
    as the verified caller in `x-forwarded-client-cert: URI=...`.

    Expected (SPIFFE ID spec, section 2: the trust domain is lowercase letters, digits, `.`,
    `-`, `_`; path segments are non-empty, never `.` or `..`, of `[A-Za-z0-9.-_]`, no
    percent-encoding, no port, userinfo, query or fragment; X509-SVID section 5: such an ID
    is no SVID and must be rejected): the peer is either refused or anonymous -- an
    any-authenticated rule does not admit it and no `x-forwarded-client-cert` carries it."""
    ca = TestCA()
    statuses, xfcc = await _served_as(ca, *_leaf(ca, uri))
    assert statuses["/exact"] != 200 and statuses["/sa"] != 200  # (held already)
    assert statuses["/authenticated"] != 200, statuses
    assert not xfcc, f"the application was told the caller is {xfcc!r}"


@pytest.mark.parametrize("kind", ["ca_true", "key_agreement_only"])
async def test_a_leaf_the_svid_profile_forbids_is_no_identity(kind: str) -> None:
    """DEFECT: an inbound mTLS listener takes as shop/api a client certificate that is not an
    X509-SVID leaf: one with `basicConstraints CA:TRUE` (and keyCertSign), or one whose key
    usage is keyAgreement without digitalSignature.  Both pass every rule of the control
    (exact principal, service account, any-authenticated) and the application is told
    `URI=spiffe://mesh.local/ns/shop/sa/api`.  OpenSSL's `ssl_client` purpose check (all the
    server context does, `runtime/tls.build_server_context`) accepts a CA certificate as a
    client's end entity and takes keyAgreement in place of digitalSignature, and
    `spiffe_id` reads the URI SAN of whatever verified.

    Expected: SPIFFE X509-SVID section 5.2 (leaf validation: "the validator MUST ensure that
    the CA field in the basic constraints extension is set to false, and that keyCertSign and
    cRLSign are not set"); RFC 8446 section 4.4.2.2 (the certificate "MUST allow the key to be
    used for signing (i.e., the digitalSignature bit MUST be set if the Key Usage extension is
    present)"); RFC 5280 section 4.2.1.3 (digitalSignature is the bit for signatures other
    than on certificates and CRLs, as a TLS CertificateVerify is).  The connection is refused
    (or the peer anonymous): the ALLOW rules refuse it and no identity reaches the
    application."""
    ca = TestCA()
    cert, key = (_leaf(ca, API, ca_flag=True) if kind == "ca_true"
                 else _leaf(ca, API, digital_signature=False))
    statuses, xfcc = await _served_as(ca, cert, key)
    assert statuses["/exact"] != 200, statuses
    assert statuses["/sa"] != 200, statuses
    assert not xfcc, f"the application was told the caller is {xfcc!r}"
