"""Reading a peer's SPIFFE ID from what the TLS layer verified, and the client's check: the
only URI SAN, a valid SPIFFE ID with a path, on a certificate the X509-SVID profile allows as a
leaf (ADR 0030, 0097)."""

from __future__ import annotations

import datetime
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tulle.dataplane.security.spiffe import _is_svid_leaf, expect, spiffe_id
from tulle.dataplane.telemetry.metrics import CounterChild

ID = "spiffe://mesh.local/ns/default/sa/web"
_KEY = ec.generate_private_key(ec.SECP256R1())


def _ku(**bits: bool) -> x509.KeyUsage:
    names = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{n: bits.get(n, False) for n in names})


def leaf(*uris: str, ca: bool | None = False, ku: x509.KeyUsage | None = None,
         dns: tuple[str, ...] = ()) -> bytes:
    """A certificate (DER) with these URI SANs; `ca` None: no basic constraints; `ku` None:
    digitalSignature only (as the mesh's CA issues), `_ku()` for none at all."""
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(x509.Name([]))
         .public_key(_KEY.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)))
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    if names:
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=True)
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    b = b.add_extension(ku if ku is not None else _ku(digital_signature=True), critical=True)
    return b.sign(_KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


class Peer:
    """An `ssl.SSLObject` after the handshake, as far as `spiffe_id` looks: `getpeercert()`
    decodes the DER (its `subjectAltName`) when verified, `{}` when not; or raises."""

    def __init__(self, der: bytes | Exception | None, verified: bool = True) -> None:
        self.der = der
        self.verified = verified

    def getpeercert(self, binary_form: bool = False) -> Any:
        if isinstance(self.der, Exception):
            raise self.der
        if binary_form:
            return self.der
        if self.der is None or not self.verified:
            return {}
        c = x509.load_der_x509_certificate(self.der)
        try:
            san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return {"subject": ()}
        return {"subjectAltName": tuple(
            ("URI", n.value) if isinstance(n, x509.UniformResourceIdentifier)
            else ("DNS", n.value) for n in san)}


@pytest.mark.parametrize(("peer", "want"), [
    (Peer(leaf(ID)), ID),
    (Peer(leaf(ID, dns=("web.example",))), ID),
    (Peer(leaf(ID), verified=False), ""),  # not verified: the stdlib gives an empty dict
    (Peer(leaf(ID, "spiffe://mesh.local/ns/x/sa/y")), ""),  # two URIs: no SVID
    (Peer(leaf("https://mesh.local/ns/default/sa/web")), ""),
    (Peer(leaf("spiffe://mesh.local")), ""),  # a trust domain's ID names no workload
    (Peer(leaf(ID + "/")), ""),  # no valid SPIFFE ID (the table: test_spiffe_id.py)
    (Peer(leaf("spiffe://mesh.local/ns/default/sa/w%65b")), ""),
    (Peer(leaf("spiffe://mesh.local:443/ns/default/sa/web")), ""),
    (Peer(leaf(dns=("web.example",))), ""),
    (Peer(ValueError("handshake not done")), ""),
    (None, ""),
])
def test_the_identity_is_the_single_valid_spiffe_uri_of_a_verified_certificate(
        peer: Peer | None, want: str) -> None:
    assert spiffe_id(cast(Any, peer)) == want


@pytest.mark.parametrize(("der", "ok"), [
    (leaf(ID), True),
    (leaf(ID, ca=None), True),  # no basic constraints: not a CA
    (leaf(ID, ku=_ku(digital_signature=True, key_encipherment=True, key_agreement=True)), True),
    (leaf(ID, ca=True), False),  # X509-SVID 5.2: a leaf is no CA
    (leaf(ID, ca=True, ku=_ku(digital_signature=True, key_cert_sign=True)), False),
    (leaf(ID, ku=_ku(digital_signature=True, key_cert_sign=True)), False),  # nor signs certs
    (leaf(ID, ku=_ku(digital_signature=True, crl_sign=True)), False),  # or CRLs
    (leaf(ID, ku=_ku(key_agreement=True)), False),  # RFC 8446 4.4.2.2: digitalSignature
    (leaf(ID, ku=_ku(key_encipherment=True)), False),
    (leaf(ID, ku=_ku()), False),  # a key usage with no bit at all
])
def test_a_leaf_is_no_ca_and_its_key_signs(der: bytes, ok: bool) -> None:
    assert _is_svid_leaf(der) is ok
    assert spiffe_id(cast(Any, Peer(der))) == (ID if ok else "")


def test_a_certificate_without_key_usage_is_a_leaf() -> None:
    """RFC 8446 asks for digitalSignature only when the extension is present."""
    now = datetime.datetime.now(datetime.UTC)
    der = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(x509.Name([]))
           .public_key(_KEY.public_key()).serial_number(1)
           .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ID)]),
                          critical=True)
           .sign(_KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    assert _is_svid_leaf(der)


def test_what_does_not_parse_is_no_leaf() -> None:
    """Fail closed: OpenSSL parsed it already, but a reader that gives up says no."""
    der = leaf(ID)
    assert not _is_svid_leaf(der[:-80])  # truncated
    assert not _is_svid_leaf(b"")
    assert not _is_svid_leaf(b"\x30\x84\x00\x00\x00\x10")  # a 4-byte length
    # A key usage twice, each fine alone (a builder refuses: made as 2.5.29.99, then patched).
    now = datetime.datetime.now(datetime.UTC)
    other = x509.ObjectIdentifier("2.5.29.99")
    digital_signature = b"\x03\x02\x07\x80"  # BIT STRING, bit 0
    der = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(x509.Name([]))
           .public_key(_KEY.public_key()).serial_number(1)
           .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
           .add_extension(_ku(digital_signature=True), critical=True)
           .add_extension(x509.UnrecognizedExtension(other, digital_signature), critical=False)
           .sign(_KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    assert _is_svid_leaf(der)
    assert der.count(b"\x06\x03\x55\x1d\x63") == 1
    assert not _is_svid_leaf(der.replace(b"\x06\x03\x55\x1d\x63", b"\x06\x03\x55\x1d\x0f"))


def test_the_check_passes_expected_ids_and_counts_and_names_the_others() -> None:
    counter = CounterChild()
    check = expect([ID], counter)
    assert check(cast(Any, Peer(leaf(ID)))) is None
    assert counter.value == 0
    other = "spiffe://mesh.local/ns/default/sa/impostor"
    assert check(cast(Any, Peer(leaf(other)))) == (
        f"TLS: server identity {other} is not one expected for the destination")
    assert check(cast(Any, Peer(leaf(ID), verified=False))) == (
        "TLS: server identity (none) is not one expected for the destination")
    # A server whose certificate is a CA's, or whose key may not sign, is no one.
    assert check(cast(Any, Peer(leaf(ID, ca=True)))) == (
        "TLS: server identity (none) is not one expected for the destination")
    assert check(cast(Any, Peer(leaf(ID, ku=_ku(key_agreement=True))))) == (
        "TLS: server identity (none) is not one expected for the destination")
    assert counter.value == 4
