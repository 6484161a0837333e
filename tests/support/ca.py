"""A small certificate authority for mTLS tests: a root and SPIFFE SVIDs, all in memory.

    ca = TestCA("mesh.local")
    ident = ca.identity("workload", "spiffe://mesh.local/ns/default/sa/web")
    bundle = ca.bundle("mesh")

Keys are ECDSA P-256 (DESIGN.md decision 7).  An SVID carries exactly one URI SAN (its SPIFFE
ID), no DNS name, and is valid for one day unless `expired=True` (it then ended an hour ago).
The control plane's CA (Z1) is a different thing; this one exists so data-plane tests need
nothing but `cryptography`.
"""

from __future__ import annotations

import datetime
import os
import ssl
import uuid
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tulle.dataplane.stream_tls import StreamTrust


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


class TestCA:
    """A self-signed root that signs SVIDs."""

    __test__ = False  # not a pytest test class

    def __init__(self, trust_domain: str = "mesh.local") -> None:
        self.trust_domain = trust_domain
        self.key = ec.generate_private_key(ec.SECP256R1())
        # A unique name: a peer trusting two test CAs must find the right one by name.
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain} test root"),
                          x509.NameAttribute(NameOID.SERIAL_NUMBER, uuid.uuid4().hex)])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=2))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def svid(self, spiffe_id: str, *, expired: bool = False,
             extra_uris: tuple[str, ...] = ()) -> tuple[str, str]:
        """(certificate PEM, key PEM) of a leaf whose URI SAN is `spiffe_id`."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        start, end = ((now - datetime.timedelta(days=2), now - datetime.timedelta(hours=1))
                      if expired else (now - datetime.timedelta(minutes=5),
                                       now + datetime.timedelta(days=1)))
        uris = [x509.UniformResourceIdentifier(u) for u in (spiffe_id, *extra_uris)]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(uris), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode(), _pem_key(key)

    def identity(self, name: str, spiffe_id: str, **kw: Any) -> dict[str, str]:
        """An `identities` section holding a fresh SVID for `spiffe_id`."""
        cert, key = self.svid(spiffe_id, **kw)
        return {"name": name, "cert_chain_pem": cert, "private_key_pem": key}

    def bundle(self, name: str) -> dict[str, Any]:
        """A `trust_bundles` section trusting this root."""
        return {"name": name, "ca_pems": [self.pem]}


def server_context(cert_pem: str, key_pem: str) -> ssl.SSLContext:
    """A TLS 1.3 server context holding `cert_pem` / `key_pem` (loaded from memory)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    fds = [os.memfd_create("test-pem", os.MFD_CLOEXEC) for _ in range(2)]
    try:
        for fd, pem in zip(fds, (cert_pem, key_pem), strict=True):
            os.write(fd, pem.encode())
        ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
    finally:
        for fd in fds:
            os.close(fd)
    return ctx


def stream_tls(ca: TestCA | None = None, spiffe_id: str = "spiffe://mesh.local/ns/tulle-system"
               "/sa/control-plane") -> tuple[ssl.SSLContext, StreamTrust]:
    """For a bare `PushServer` (or a raw stream server) and an `Agent`: a server context whose
    certificate `ca` (default: a fresh one) signed for `spiffe_id` (default: the control
    plane's), and the agent's trust in `ca` (as with `--ca-file`)."""
    ca = ca or TestCA()
    cert, key = ca.svid(spiffe_id)
    return server_context(cert + ca.pem, key), StreamTrust(ca_pems=[ca.pem])
