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
from tests.support.certs import issued

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


def _intermediate(root: CertificateAuthority, cn: str) -> CertificateAuthority:
    """An operator's intermediate CA under `root` (its chain: itself, then the root)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return CertificateAuthority([issued(cn, root.cert, root._key, key, ca=True), root.cert], key)


def _pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def test_a_certificate_of_another_intermediate_under_the_trusted_root_is_accepted() -> None:
    """An operator replaces the files CA with a new intermediate under the same root and
    restarts: certificates the old intermediate issued chain to the trusted root, as every
    peer's mTLS accepts them, so the stream admits them too (it locked every proxy out)."""
    from tulle.controlplane.ca.authority import verify_workload

    root = CertificateAuthority.generate("cluster.local")
    old, new = _intermediate(root, "int-1"), _intermediate(root, "int-2")
    chain = old.sign_csr(_csr(), ID, "web-0").chain_pem
    with pytest.raises(ValueError, match="not issued by this mesh"):
        verify_workload(chain, [new.cert])  # the signing CA alone, as before
    identity, workload, _ = verify_workload(chain, [new.cert], roots=[root.cert])
    assert (identity, workload) == (ID, "web-0")
    # Another root: refused.
    other = CertificateAuthority.generate("cluster.local")
    with pytest.raises(ValueError, match="not issued by this mesh"):
        verify_workload(chain, [new.cert], roots=[other.cert])
    # Only the leaf presented (no intermediate to follow): refused.
    leaf_only = chain.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    with pytest.raises(ValueError, match="not issued by this mesh"):
        verify_workload(leaf_only, [new.cert], roots=[root.cert])


def test_a_chain_through_a_certificate_that_is_no_ca_is_refused() -> None:
    """Attack: a workload's own certificate (CA:FALSE) under the root used to sign a leaf
    for another identity."""
    from tulle.controlplane.ca.authority import verify_workload

    root = CertificateAuthority.generate("cluster.local")
    mid_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(
        ec.SECP256R1())
    mid = issued("web-0", root.cert, root._key, mid_key, ca=False,
                uri="spiffe://cluster.local/ns/shop/sa/web")
    leaf = issued("db-0", mid, mid_key, leaf_key, ca=False,
                 uri="spiffe://cluster.local/ns/shop/sa/db")
    with pytest.raises(ValueError, match="not issued by this mesh"):
        verify_workload(_pem(leaf, mid, root.cert), [], roots=[root.cert])
    # The same shape with CA:TRUE in the middle is a real chain, and accepted.
    ca_mid = issued("int", root.cert, root._key, mid_key, ca=True)
    leaf2 = issued("db-0", ca_mid, mid_key, leaf_key, ca=False,
                  uri="spiffe://cluster.local/ns/shop/sa/db")
    identity, workload, _ = verify_workload(_pem(leaf2, ca_mid), [], roots=[root.cert])
    assert (str(identity), workload) == ("spiffe://cluster.local/ns/shop/sa/db", "db-0")


def test_a_chain_deeper_than_three_intermediates_is_refused() -> None:
    """Bounded work per presented chain: past `MAX_INTERMEDIATES` the walk stops and refuses,
    however long the chain a peer sends; three deep is still a real chain."""
    from tulle.controlplane.ca.authority import MAX_INTERMEDIATES, verify_workload

    root = CertificateAuthority.generate("cluster.local")
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(MAX_INTERMEDIATES + 2)]
    cas, issuer, issuer_key = [], root.cert, root._key
    for i, k in enumerate(keys[:-1]):
        c = issued(f"int-{i}", issuer, issuer_key, k, ca=True)
        cas.append(c)
        issuer, issuer_key = c, k

    def chain_of(depth: int) -> str:
        parent, parent_key = cas[depth - 1], keys[depth - 1]
        leaf = issued("web-0", parent, parent_key, keys[-1], ca=False,
                      uri="spiffe://cluster.local/ns/shop/sa/web")
        return _pem(leaf, *reversed(cas[:depth]))

    assert verify_workload(chain_of(MAX_INTERMEDIATES), [], roots=[root.cert])[1] == "web-0"
    with pytest.raises(ValueError, match="not issued by this mesh"):
        verify_workload(chain_of(MAX_INTERMEDIATES + 1), [], roots=[root.cert])


def test_an_intermediate_may_not_sign_more_cas_than_its_path_length_allows() -> None:
    """Attack: an intermediate limited to `pathLenConstraint: 0` (it may sign leaves only)
    mints a CA of its own; OpenSSL refuses that chain in every peer's handshake, and so does
    the stream."""
    from tulle.controlplane.ca.authority import verify_workload

    root = CertificateAuthority.generate("cluster.local")
    k1, k2, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    limited = issued("limited", root.cert, root._key, k1, ca=True, path_length=0)
    minted = issued("minted", limited, k1, k2, ca=True)
    leaf = issued("web-0", minted, k2, leaf_key, ca=False,
                  uri="spiffe://cluster.local/ns/shop/sa/web")
    with pytest.raises(ValueError, match="not issued by this mesh"):
        verify_workload(_pem(leaf, minted, limited), [], roots=[root.cert])
    # The same limited intermediate signing the leaf itself is within its constraint.
    direct = issued("web-0", limited, k1, leaf_key, ca=False,
                    uri="spiffe://cluster.local/ns/shop/sa/web")
    assert verify_workload(_pem(direct, limited), [], roots=[root.cert])[1] == "web-0"
