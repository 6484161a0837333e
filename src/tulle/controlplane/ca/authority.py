"""The certificate authority: a P-256 signing key and its certificate, and CSR signing.

Why its own module: everything that touches the CA's private key is here, so it is easy to see
that the key is never logged, printed or serialized except by `key_pem()` for the store
(`persist.py`).  `repr()` of the authority names the subject only.

The CA signs a workload CSR only for the identity the caller was granted (`admission.py`
authenticated it): the SPIFFE ID goes into the URI SAN and the workload's name into the subject
CN, whatever the CSR asked for; a CSR that *asks* for another URI is refused rather than
silently corrected, so a confused or malicious proxy learns why.  Accepted CSRs: PEM, at most
`MAX_CSR_BYTES`, a valid self-signature, an ECDSA P-256 key (the mesh's one key type).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tulle.controlplane.ca.spiffe import SpiffeId
from tulle.x509chain import basic_constraints, chains_to_root, issued_by

MAX_CSR_BYTES = 4096
"""A P-256 CSR with one URI SAN is ~500 bytes of PEM; anything near this bound is not ours."""
DEFAULT_CERT_TTL = dt.timedelta(hours=24)
ROOT_TTL = dt.timedelta(days=3650)
CLOCK_SKEW = dt.timedelta(minutes=5)
"""Certificates start this much in the past, so a proxy whose clock lags still accepts them."""


class CAError(Exception):
    """The CA material is unusable (operator input); the message names the file, never a key."""


class CsrError(ValueError):
    """A CSR that is refused; the message says why (sent to the proxy)."""


@dataclass(frozen=True, slots=True)
class Signed:
    """A signed workload certificate: leaf then intermediates (PEM), and its validity."""

    chain_pem: str
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int
    issued_at: dt.datetime
    """When it was signed (`not_before` is earlier by `CLOCK_SKEW`); lifetimes, and so
    renewal at half-life, count from here."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class CertificateAuthority:
    """A signing key and its CA certificate; `chain` runs from that certificate to the root."""

    __slots__ = ("_chain_pem", "_key", "cert", "chain", "root")

    def __init__(self, chain: list[x509.Certificate], key: ec.EllipticCurvePrivateKey) -> None:
        if not chain:
            raise CAError("the CA certificate chain is empty")
        cert = chain[0]
        bc = basic_constraints(cert)
        if bc is None or not bc.ca:
            raise CAError("the CA certificate is not a CA (basicConstraints CA:TRUE missing)")
        if not isinstance(key.curve, ec.SECP256R1):
            raise CAError(f"the CA key is {key.curve.name}; the mesh uses ECDSA P-256")
        pub = cert.public_key()
        if not isinstance(pub, ec.EllipticCurvePublicKey) or (
                pub.public_numbers() != key.public_key().public_numbers()):
            raise CAError("the CA key does not match the CA certificate")
        root = chain[-1]
        if root.issuer != root.subject:
            raise CAError("the CA certificate chain must end with its self-signed root")
        self.cert = cert
        self.chain = chain
        self.root = root
        self._key = key
        self._chain_pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode()
                                  for c in chain)

    def __repr__(self) -> str:
        return f"CertificateAuthority(subject={self.cert.subject.rfc4514_string()!r})"

    # -- making and loading ---------------------------------------------------------------

    @classmethod
    def generate(cls, trust_domain: str, now: dt.datetime | None = None) -> CertificateAuthority:
        """A new self-signed P-256 root for `trust_domain`."""
        now = now or _now()
        key = ec.generate_private_key(ec.SECP256R1())
        # A serial number in the name: two roots live side by side during a rotation (ADR
        # 0035), and TLS stacks look issuers up by name first.
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tulle"),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"tulle root {trust_domain}"),
                          x509.NameAttribute(NameOID.SERIAL_NUMBER, secrets.token_hex(8))])
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + ROOT_TTL)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        return cls([cert], key)

    @classmethod
    def from_pem(cls, chain_pem: bytes, key_pem: bytes, *, where: str = "the CA"
                 ) -> CertificateAuthority:
        """From PEM text (operator files or the store); errors name `where`, never the key."""
        try:
            chain = x509.load_pem_x509_certificates(chain_pem)
        except ValueError as exc:
            raise CAError(f"{where}: the certificate is not PEM X.509") from exc
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise CAError(f"{where}: the key is not an unencrypted PEM private key") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            kind = type(key).__name__.removeprefix("_").split("PrivateKey")[0] or "other"
            raise CAError(f"{where}: the key is not an ECDSA key ({kind}); the mesh uses "
                          f"ECDSA P-256")
        try:
            return cls(chain, key)
        except CAError as exc:
            raise CAError(f"{where}: {exc}") from None

    def chain_pem(self) -> str:
        return self._chain_pem

    def not_yet_valid(self, now: dt.datetime | None = None) -> str:
        """Why this CA cannot sign yet ("" when it can): a certificate of its chain whose
        validity starts later.  What it signed would be refused by every peer until then
        (OpenSSL checks each certificate's notBefore), so a mesh must not take it."""
        now = now or _now()
        for c in self.chain:
            start = c.not_valid_before_utc
            if start > now:
                return (f"its certificate {c.subject.rfc4514_string()} is not valid before "
                        f"{start.strftime('%Y-%m-%dT%H:%M:%SZ')}")
        return ""

    def key_pem(self) -> str:
        """The private key as PEM, for the store record only (`persist.py`)."""
        return self._key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()).decode()

    def derive_secret(self, purpose: bytes) -> bytes:
        """A 32-byte secret derived from the CA key (HKDF-SHA256): every replica with the same
        CA derives the same one, so bootstrap tokens verify everywhere without a second
        secret to distribute."""
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        raw = self._key.private_numbers().private_value.to_bytes(32, "big")
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(raw)

    def trust_bundle(self) -> list[str]:
        """The trust anchors proxies verify peers with: the root."""
        return [self.root.public_bytes(serialization.Encoding.PEM).decode()]

    # -- signing ----------------------------------------------------------------------------

    def sign_csr(self, csr_pem: str | bytes, identity: SpiffeId, workload: str, *,
                 ttl: dt.timedelta = DEFAULT_CERT_TTL, now: dt.datetime | None = None
                 ) -> Signed:
        """Sign `csr_pem` for `identity` (the caller's, authenticated), or CsrError."""
        csr = check_csr(csr_pem, identity)
        now = now or _now()
        not_after = min(now + ttl, self.cert.not_valid_after_utc)
        serial = int.from_bytes(secrets.token_bytes(16), "big") >> 1
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, identity.trust_domain),
                    x509.NameAttribute(NameOID.COMMON_NAME, workload)]))
                .issuer_name(self.cert.subject)
                .public_key(csr.public_key())
                .serial_number(serial)
                .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(identity.uri)]), critical=True)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=True, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .add_extension(self._authority_key_id(), critical=False)
                .sign(self._key, hashes.SHA256()))
        leaf = cert.public_bytes(serialization.Encoding.PEM).decode()
        return Signed(leaf + self._chain_pem, now - CLOCK_SKEW, not_after, serial, now)

    def _authority_key_id(self) -> x509.AuthorityKeyIdentifier:
        """Names the signing key in each leaf, so a peer trusting two CAs of the same name
        (mid-rotation) picks the right one."""
        try:
            ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            pub = self.cert.public_key()
            assert isinstance(pub, ec.EllipticCurvePublicKey)
            return x509.AuthorityKeyIdentifier.from_issuer_public_key(pub)
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    def sign_server(self, public_key: ec.EllipticCurvePublicKey, spiffe_uri: str,
                    dns_names: list[str], ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address],
                    *, ttl: dt.timedelta = DEFAULT_CERT_TTL, now: dt.datetime | None = None
                    ) -> Signed:
        """A server certificate for the control plane's own stream (ADR 0034): the SPIFFE ID
        first among the SANs, then the DNS names and addresses it is reached by; serverAuth
        only.  The caller made the key (each replica its own)."""
        now = now or _now()
        not_after = min(now + ttl, self.cert.not_valid_after_utc)
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_uri)]
        sans += [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(i) for i in ips]
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tulle"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "tulle control plane")]))
                .issuer_name(self.cert.subject)
                .public_key(public_key)
                .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
                .not_valid_before(now - CLOCK_SKEW).not_valid_after(not_after)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .add_extension(self._authority_key_id(), critical=False)
                .sign(self._key, hashes.SHA256()))
        leaf = cert.public_bytes(serialization.Encoding.PEM).decode()
        return Signed(leaf + self._chain_pem, now - CLOCK_SKEW, not_after, cert.serial_number,
                      now)

    def verify_workload(self, chain_pem: str, now: dt.datetime | None = None
                        ) -> tuple[SpiffeId, str, x509.Certificate]:
        """A workload certificate this CA issued and that is valid now: its SPIFFE ID, its
        workload name (subject CN) and the certificate; ValueError otherwise."""
        return verify_workload(chain_pem, [self.cert], now)


MAX_INTERMEDIATES = 3
"""CA certificates a presented chain may hold between a workload certificate and a root."""


def verify_workload(chain_pem: str, issuers: list[x509.Certificate],
                    now: dt.datetime | None = None,
                    roots: Sequence[x509.Certificate] = ()
                    ) -> tuple[SpiffeId, str, x509.Certificate]:
    """A workload certificate signed by one of `issuers` (CA certificates; two during a
    rotation, ADR 0035) and valid now: its SPIFFE ID, workload name and the certificate.

    With `roots` (the trust bundle), also one that its presented chain leads to one of them
    through intermediates: what every peer's mTLS accepts already.  An operator's CA given as
    files is replaced by restarting with a new intermediate under the same root; certificates
    of the one before were refused and every proxy was locked out of its stream."""
    try:
        chain = x509.load_pem_x509_certificates(chain_pem.encode()[:MAX_CSR_BYTES * 4])
    except ValueError as exc:
        raise ValueError("the certificate is not PEM X.509") from exc
    leaf = chain[0]
    now = now or _now()
    if not any(issued_by(leaf, i) for i in issuers) and not (
            roots and chains_to_root(chain, roots, now,
                                    max_intermediates=MAX_INTERMEDIATES)):
        raise ValueError("the certificate was not issued by this mesh's CA")
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        raise ValueError("the certificate has expired or is not yet valid")
    uris = _uris(leaf)
    if len(uris) != 1:
        raise ValueError("the certificate does not carry exactly one SPIFFE ID")
    cns = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise ValueError("the certificate does not name its workload")
    return SpiffeId.parse(uris[0]), str(cns[0].value), leaf


def check_csr(csr_pem: str | bytes, identity: SpiffeId) -> x509.CertificateSigningRequest:
    """The CSR, if it is one the CA may sign for `identity`; CsrError naming the problem."""
    data = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
    if len(data) > MAX_CSR_BYTES:
        raise CsrError(f"CSR too large: {len(data)} bytes (at most {MAX_CSR_BYTES})")
    if not data.strip():
        raise CsrError("CSR missing")
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError:
        raise CsrError("CSR malformed: not a PEM certificate request") from None
    if not csr.is_signature_valid:
        raise CsrError("CSR malformed: its signature does not verify")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve,
                                                                        ec.SECP256R1):
        raise CsrError("CSR key must be ECDSA P-256")
    try:
        asked = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return csr
    except ValueError:
        raise CsrError("CSR malformed: unreadable extensions") from None
    others = [str(u) for u in asked.get_values_for_type(x509.UniformResourceIdentifier)
              if u != identity.uri]
    if others or asked.get_values_for_type(x509.DNSName) or asked.get_values_for_type(
            x509.IPAddress):
        shown = (others[0] if others else "a DNS name or IP address")[:120]
        raise CsrError(f"CSR asks for {shown}; this caller may only have {identity.uri}")
    return csr


def _uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
