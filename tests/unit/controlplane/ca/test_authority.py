"""The CA signs only well-formed P-256 CSRs, only for the granted identity, and never shows
its key."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from tulle.controlplane.ca.authority import MAX_CSR_BYTES, CAError, CertificateAuthority, CsrError
from tulle.controlplane.ca.persist import load_files
from tulle.controlplane.ca.spiffe import SpiffeId

ID = SpiffeId("cluster.local", "shop", "web")


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
         uris: tuple[str, ...] = ()) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
    if uris:
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.UniformResourceIdentifier(u) for u in uris]), critical=False)
    return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate("cluster.local")


def test_signed_certificate_carries_the_spiffe_id_and_24h(ca: CertificateAuthority) -> None:
    now = dt.datetime.now(dt.UTC)
    signed = ca.sign_csr(_csr(), ID, "web-0", now=now)
    leaf = x509.load_pem_x509_certificates(signed.chain_pem.encode())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(u) for u in san.get_values_for_type(x509.UniformResourceIdentifier)] == [
        "spiffe://cluster.local/ns/shop/sa/web"]
    assert leaf.not_valid_after_utc == now.replace(microsecond=0) + dt.timedelta(hours=24)
    leaf.verify_directly_issued_by(ca.cert)
    identity, workload, _ = ca.verify_workload(signed.chain_pem)
    assert (identity, workload) == (ID, "web-0")


def test_csr_asking_for_another_identity_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(CsrError, match="spiffe://cluster.local/ns/shop/sa/admin"):
        ca.sign_csr(_csr(uris=("spiffe://cluster.local/ns/shop/sa/admin",)), ID, "web-0")
    ca.sign_csr(_csr(uris=(ID.uri,)), ID, "web-0")  # asking for its own is fine


@pytest.mark.parametrize(("csr", "why"), [
    ("x" * (MAX_CSR_BYTES + 1), "too large"),
    ("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
     "malformed"),
    ("", "missing"),
])
def test_malformed_or_oversized_csr_is_refused(ca: CertificateAuthority, csr: str,
                                               why: str) -> None:
    with pytest.raises(CsrError, match=why):
        ca.sign_csr(csr, ID, "web-0")


def test_rsa_csr_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(CsrError, match="P-256"):
        ca.sign_csr(_csr(rsa.generate_private_key(65537, 2048)), ID, "web-0")


def test_certificate_of_another_ca_or_expired_is_not_accepted(ca: CertificateAuthority) -> None:
    other = CertificateAuthority.generate("cluster.local")
    with pytest.raises(ValueError, match="not issued by this mesh"):
        ca.verify_workload(other.sign_csr(_csr(), ID, "web-0").chain_pem)
    old = ca.sign_csr(_csr(), ID, "web-0", ttl=dt.timedelta(minutes=1),
                      now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1))
    with pytest.raises(ValueError, match="expired"):
        ca.verify_workload(old.chain_pem)


def test_key_never_in_repr(ca: CertificateAuthority) -> None:
    secret = ca.key_pem().splitlines()[1]
    assert secret not in repr(ca)
    assert "PRIVATE" not in repr(ca)


def test_operator_files_round_trip_and_key_mode_enforced(tmp_path: Path,
                                                         ca: CertificateAuthority) -> None:
    cert, key = tmp_path / "ca.pem", tmp_path / "ca.key"
    cert.write_text(ca.chain_pem())
    key.write_text(ca.key_pem())
    os.chmod(key, 0o644)
    with pytest.raises(CAError, match="chmod 600") as err:
        load_files(cert, key)
    assert ca.key_pem().splitlines()[1] not in str(err.value)
    os.chmod(key, 0o600)
    loaded = load_files(cert, key)
    assert loaded.trust_bundle() == ca.trust_bundle()
    key.write_text(CertificateAuthority.generate("x.local").key_pem())
    with pytest.raises(CAError, match="does not match"):
        load_files(cert, key)
