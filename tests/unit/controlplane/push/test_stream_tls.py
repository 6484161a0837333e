"""The control plane's stream certificate: SANs from flags, a key of its own, re-issue."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509

from tulle.controlplane.ca.authority import CertificateAuthority
from tulle.controlplane.push.stream_tls import StreamCertificate, default_sans, parse_sans


def test_sans_are_addresses_or_dns_names_and_anything_else_is_named() -> None:
    dns, ips = parse_sans(["cp.example.test", "10.0.0.1", "[::1]", "*.cp.example.test"])
    assert dns == ["cp.example.test", "*.cp.example.test"]
    assert ips == [ipaddress.ip_address("10.0.0.1"), ipaddress.ip_address("::1")]
    for bad in ("", "spaces here", "under_score", "a" * 300, "http://x"):
        with pytest.raises(ValueError, match="--stream-san"):
            parse_sans([bad])


def test_the_defaults_cover_loopback_and_a_specific_listen_address() -> None:
    dns, ips = default_sans("0.0.0.0")
    assert "localhost" in dns
    assert {str(i) for i in ips} == {"127.0.0.1", "::1"}
    assert "192.0.2.7" in {str(i) for i in default_sans("192.0.2.7")[1]}
    assert "cp.internal" in default_sans("cp.internal")[0]


def test_each_issue_makes_a_new_key_with_the_control_planes_id() -> None:
    ca = CertificateAuthority.generate("mesh.local")
    sc = StreamCertificate(ca, lambda: "mesh.local", host="127.0.0.1", sans=["cp.test"])
    assert sc.signed is not None
    first = x509.load_pem_x509_certificate(sc.signed.chain_pem.encode())
    san = first.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "spiffe://mesh.local/ns/tulle-system/sa/control-plane"]
    assert "cp.test" in san.get_values_for_type(x509.DNSName)
    eku = first.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    assert 0 < sc.renew_in() <= 12 * 3600 + 1  # half of 24 h
    sc.renew()
    second = x509.load_pem_x509_certificate(sc.signed.chain_pem.encode())
    assert second.public_key() != first.public_key() and sc.renewals == 1
    assert "PRIVATE" not in repr(sc)
