"""Self-signed certificates for TLS tests, generated with `cryptography` into a directory."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID


def self_signed(directory: Path, name: str = "localhost") -> tuple[str, str]:
    """Write `<name>.crt` and `<name>.key` (ECDSA P-256, SAN localhost + 127.0.0.1)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    crt = directory / f"{name}.crt"
    pem_key = directory / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem_key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return str(crt), str(pem_key)


CAKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def operator_root(key: CAKey, *, ca: bool = True, cn: str = "operator root",
                  days: int = 20, starts_in: datetime.timedelta | None = None
                  ) -> x509.Certificate:
    """A self-signed root as an operator would bring to `--ca-cert` (valid `days` more; `ca`
    False makes the not-a-CA case; `starts_in` one not valid yet)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    start = now + starts_in if starts_in is not None else now - datetime.timedelta(hours=1)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))


def issued(cn: str, issuer: x509.Certificate, issuer_key: CAKey, key: CAKey, *, ca: bool,
           uri: str = "", days: int = 10, path_length: int | None = None) -> x509.Certificate:
    """A certificate for `key` signed by `issuer`: an intermediate CA (`ca`, with
    `path_length` as its pathLenConstraint) or a leaf (with a SPIFFE `uri`), valid from an
    hour ago for `days`."""
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
         .issuer_name(issuer.subject).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(hours=1))
         .not_valid_after(now + datetime.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None),
                        critical=True))
    if uri:
        b = b.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]),
                            critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def write_ca_files(directory: Path, cert: x509.Certificate, key: CAKey, mode: int = 0o600,
                   name: str = "ca") -> tuple[Path, Path]:
    """`<name>.pem` and `<name>.key` (PKCS#8, unencrypted, file mode `mode`)."""
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(mode)
    return cert_path, key_path
