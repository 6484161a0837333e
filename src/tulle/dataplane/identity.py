"""The proxy's own workload identity: its key, its CSR, the certificate it holds, renewal time.

The key is made here and never leaves the process in a message (only the CSR and a signature
go out) or a log line (`repr` redacts it); `/config_dump` redacts identities (ADR 0019).  With
`--cache-dir` it is kept on disk, the proxy uid's alone, with its certificate and the mesh
bundle (`identity_cache.py`, ADR 0123): the cached snapshot itself is still the control
plane's config without the injected sections.

The certificate is put into every snapshot the proxy applies as the reserved sections
`identities[name=workload]` and `trust_bundles[name=mesh]` (ADR 0028): compiled TLS settings
refer to "this workload's identity" and "the mesh's CAs" by those names, and a snapshot that
itself carries a section with either name is refused.  A node's further workloads hold
theirs as `workload:<namespace>/<name>` (ADR 0032; the names are in `proxyconfig/reserved.py`).
"""

from __future__ import annotations

import base64
import random

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tulle.proxyconfig.model import Identity, ProxyConfig, TrustBundle
from tulle.proxyconfig.reserved import MESH_BUNDLE, WORKLOAD_IDENTITY, is_reserved_identity
from tulle.proxyconfig.stream import Certificate, hello_proof_payload

__all__ = ["MESH_BUNDLE", "WORKLOAD_IDENTITY", "HeldIdentity", "ReservedSection", "WorkloadKey",
           "check_reserved", "inject"]
RENEW_JITTER = 0.1
"""Renewal happens at half the lifetime, give or take this share of it."""


class ReservedSection(ValueError):
    """A snapshot carries a section whose name the proxy reserves."""


class WorkloadKey:
    """A fresh ECDSA P-256 key and what it is used for."""

    __slots__ = ("_key",)

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())

    def __repr__(self) -> str:
        return "WorkloadKey(<redacted>)"

    @classmethod
    def from_private(cls, key: ec.EllipticCurvePrivateKey) -> WorkloadKey:
        """A key kept from before (the identity cache, ADR 0123); ValueError unless P-256."""
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("a workload key is ECDSA P-256")
        out = cls.__new__(cls)
        out._key = key
        return out

    def csr(self, namespace: str, name: str) -> str:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, namespace)])
        req = x509.CertificateSigningRequestBuilder().subject_name(subject)
        return req.sign(self._key, hashes.SHA256()).public_bytes(
            serialization.Encoding.PEM).decode()

    def proof(self, namespace: str, name: str, at: int) -> str:
        sig = self._key.sign(hello_proof_payload(namespace, name, at), ec.ECDSA(hashes.SHA256()))
        return base64.b64encode(sig).decode()

    def certified_by(self, chain_pem: str) -> bool:
        """True when the chain's leaf certifies this key (a certificate for another key, e.g.
        the answer to an earlier CSR, must never be paired with this one)."""
        try:
            leaf = x509.load_pem_x509_certificates(chain_pem.encode())[0]
        except (ValueError, IndexError):
            return False
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        return bool(leaf.public_key().public_bytes(serialization.Encoding.DER, spki)
                    == self._key.public_key().public_bytes(serialization.Encoding.DER, spki))

    def pem(self) -> str:
        return self._key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()).decode()


class HeldIdentity:
    """A certificate the control plane signed for `key`."""

    __slots__ = ("bundle", "cert", "identity", "key")

    def __init__(self, key: WorkloadKey, cert: Certificate,
                 name: str = WORKLOAD_IDENTITY) -> None:
        self.key = key
        self.cert = cert
        self.identity = Identity(name=name, cert_chain_pem=cert.cert_chain,
                                 private_key_pem=key.pem())
        self.bundle = TrustBundle(name=MESH_BUNDLE, ca_pems=list(cert.trust_bundle))

    def __repr__(self) -> str:
        return f"HeldIdentity(not_after={self.cert.not_after})"

    def renew_at(self, rng: random.Random | None = None) -> float:
        """Unix seconds to renew at: half-life, with jitter so a fleet does not renew at once."""
        life = max(1, self.cert.not_after - self.cert.not_before)
        jitter = (rng or random).uniform(-RENEW_JITTER, RENEW_JITTER) * life
        return self.cert.not_before + life / 2 + jitter

    def inject(self, cfg: ProxyConfig) -> ProxyConfig:
        """`cfg` with this identity and the mesh bundle in their reserved sections."""
        return inject(cfg, [self])


def inject(cfg: ProxyConfig, held: list[HeldIdentity]) -> ProxyConfig:
    """`cfg` with every held identity (a node holds one per workload, ADR 0032) and the mesh
    bundle of the newest certificate in their reserved sections; `cfg` itself when none."""
    if not held:
        return cfg
    newest = max(held, key=lambda h: h.cert.not_before)
    return msgspec.structs.replace(
        cfg, identities=[*cfg.identities, *(h.identity for h in held)],
        trust_bundles=[*cfg.trust_bundles, newest.bundle])


def check_reserved(cfg: ProxyConfig) -> None:
    """Refuse a snapshot that carries a section the proxy fills itself."""
    for i in cfg.identities:
        if is_reserved_identity(i.name):
            raise ReservedSection(f"identities[name={i.name}]: reserved for the proxy's own "
                                  f"workload certificates")
    for b in cfg.trust_bundles:
        if b.name == MESH_BUNDLE:
            raise ReservedSection(f"trust_bundles[name={MESH_BUNDLE}]: reserved for the "
                                  f"mesh CA")
