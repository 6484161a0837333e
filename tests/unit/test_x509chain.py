"""`tulle.x509chain`: the one chain walk the CA and the proxy's identity cache share."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tulle.x509chain import chains_to_root, issued_by

NOW = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)


def _cert(name: str, key: ec.EllipticCurvePrivateKey, issuer: str,
          signer: ec.EllipticCurvePrivateKey, *, ca: bool, path_len: int | None = None,
          days: tuple[int, int] = (-1, 1)) -> x509.Certificate:
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(NOW + dt.timedelta(days=days[0]))
         .not_valid_after(NOW + dt.timedelta(days=days[1])))
    if ca:
        b = b.add_extension(x509.BasicConstraints(ca=True, path_length=path_len), critical=True)
    return b.sign(signer, hashes.SHA256())


def test_a_chain_through_valid_intermediates_to_a_root() -> None:
    rk, ik, lk, other = (ec.generate_private_key(ec.SECP256R1()) for _ in range(4))
    root = _cert("root", rk, "root", rk, ca=True)
    mid = _cert("mid", ik, "root", rk, ca=True, path_len=0)
    leaf = _cert("leaf", lk, "mid", ik, ca=False)
    assert issued_by(leaf, mid) and not issued_by(leaf, root)
    assert chains_to_root([leaf, mid], [root], NOW, max_intermediates=3)
    assert not chains_to_root([leaf, mid], [root], NOW, max_intermediates=0)
    assert not chains_to_root([leaf], [root], NOW, max_intermediates=3)  # mid not presented
    # A forged issuer (right name, wrong key) is no link.
    forged = _cert("mid", other, "root", other, ca=True)
    assert not chains_to_root([leaf, forged], [root], NOW, max_intermediates=3)
    # An expired intermediate, a non-CA one, one past its path length: no chain.
    assert not chains_to_root([leaf, _cert("mid", ik, "root", rk, ca=True, days=(-3, -2))],
                              [root], NOW, max_intermediates=3)
    assert not chains_to_root([leaf, _cert("mid", ik, "root", rk, ca=False)], [root], NOW,
                              max_intermediates=3)
    mid2 = _cert("mid2", other, "mid", ik, ca=True)
    leaf2 = _cert("leaf", lk, "mid2", other, ca=False)
    assert not chains_to_root([leaf2, mid2, mid], [root], NOW, max_intermediates=3)


def test_an_expired_root_counts_only_when_roots_need_not_be_valid() -> None:
    rk, lk = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    root = _cert("root", rk, "root", rk, ca=True, days=(-3, -2))
    leaf = _cert("leaf", lk, "root", rk, ca=False)
    assert chains_to_root([leaf], [root], NOW, max_intermediates=3)
    assert not chains_to_root([leaf], [root], NOW, max_intermediates=3, roots_valid=True)
