"""The control plane's side of the TLS stream (ADR 0034): its server certificate and context.

Why: a bootstrap token or a certificate proof sent on a plain TCP stream can be read by anyone
on the path (ADR 0028 "Consequences").  The stream is served over TLS 1.3 with a certificate
from the mesh CA for the control plane's SPIFFE ID (`proxyconfig/stream_trust.py`), with DNS
and IP SANs for the names and addresses it is reached by (generic TLS clients check those;
proxies check the SPIFFE ID).  Each replica makes its own key (memory only, loaded through an
anonymous in-memory file, never the disk) and asks the shared CA to sign it; the certificate
is re-issued at half its lifetime with `load_cert_chain` on the live context, so new
handshakes get the new one and open streams are untouched.  The server asks for no client
certificate: the hello authenticates the proxy (ADR 0028).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import os
import re
import socket
import ssl
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives.asymmetric import ec

from tulle.controlplane.ca.authority import DEFAULT_CERT_TTL, CertificateAuthority, Signed
from tulle.proxyconfig.stream_trust import control_plane_id

log = logging.getLogger("tulle.controlplane.push")

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address
_DNS = re.compile(r"^(\*\.)?[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
                  r"(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$")
MIN_RENEW_DELAY = 1.0
"""Seconds between re-issues at least (a CA whose root ends soon cannot make it spin)."""


def parse_sans(values: Sequence[str], *, where: str = "--stream-san"
               ) -> tuple[list[str], list[IPAddr]]:
    """DNS names and addresses from `values` (each an IP address or a DNS name); ValueError
    naming the option and the value for anything else."""
    dns: list[str] = []
    ips: list[IPAddr] = []
    for v in values:
        text = v.strip()
        try:
            ips.append(ipaddress.ip_address(text.strip("[]")))
            continue
        except ValueError:
            pass
        if not text or len(text) > 253 or not _DNS.match(text):
            raise ValueError(f"{where} {v[:80]!r}: not an IP address or a DNS name")
        dns.append(text.lower())
    return dns, ips


def default_sans(host: str) -> tuple[list[str], list[IPAddr]]:
    """What the stream is reached by without `--stream-san`: loopback, this host's name, and
    the listen address when it is a specific one."""
    dns = ["localhost"]
    name = socket.gethostname()
    if name and _DNS.match(name):
        dns.append(name.lower())
    ips: list[IPAddr] = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    if host:
        try:
            addr = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            if _DNS.match(host):
                dns.append(host.lower())
        else:
            if not addr.is_unspecified:
                ips.append(addr)
    return list(dict.fromkeys(dns)), list(dict.fromkeys(ips))


def server_context() -> ssl.SSLContext:
    """TLS 1.3 only, no client certificate asked for."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _memfile(data: bytes) -> int:
    fd = os.memfd_create("tulle-stream-pem", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        raise
    return fd


def load_chain(ctx: ssl.SSLContext, chain_pem: str, key: ec.EllipticCurvePrivateKey) -> None:
    """`load_cert_chain` from memory: the key never touches the disk."""
    from cryptography.hazmat.primitives import serialization

    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    cert_fd = _memfile(chain_pem.encode())
    try:
        key_fd = _memfile(key_pem)
        try:
            ctx.load_cert_chain(f"/proc/self/fd/{cert_fd}", f"/proc/self/fd/{key_fd}")
        finally:
            os.close(key_fd)
    finally:
        os.close(cert_fd)


class StreamCertificate:
    """This replica's stream certificate: issued at construction, re-issued by `renew()`."""

    def __init__(self, ca: CertificateAuthority, trust_domain: Callable[[], str], *,
                 host: str = "", sans: Sequence[str] = (),
                 ttl: dt.timedelta = DEFAULT_CERT_TTL) -> None:
        """ValueError for an unusable `sans` entry (named)."""
        dns, ips = default_sans(host)
        extra_dns, extra_ips = parse_sans(sans)
        self.dns = list(dict.fromkeys([*dns, *extra_dns]))
        self.ips = list(dict.fromkeys([*ips, *extra_ips]))
        self.ca = ca
        self.trust_domain = trust_domain
        self.ttl = ttl
        self.context = server_context()
        self.signed: Signed | None = None
        self.renewals = 0
        self.renew()

    def __repr__(self) -> str:
        return f"StreamCertificate(sans={self.dns + [str(i) for i in self.ips]})"

    @property
    def spiffe_id(self) -> str:
        return control_plane_id(self.trust_domain())

    def renew(self) -> Signed:
        """A new key and certificate, put in force for the next handshakes."""
        key = ec.generate_private_key(ec.SECP256R1())
        signed = self.ca.sign_server(key.public_key(), self.spiffe_id, self.dns, self.ips,
                                     ttl=self.ttl)
        load_chain(self.context, signed.chain_pem, key)
        renewed = self.signed is not None
        self.signed = signed
        self.renewals += renewed
        log.info("proxy stream certificate %s for %s, valid until %s",
                 "re-issued" if renewed else "issued", self.spiffe_id,
                 signed.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"))
        return signed

    def renew_in(self, now: dt.datetime | None = None) -> float:
        """Seconds until the certificate is due for re-issue (half its lifetime)."""
        assert self.signed is not None
        s = self.signed
        due = s.issued_at + (s.not_after - s.issued_at) / 2
        return max(MIN_RENEW_DELAY, (due - (now or dt.datetime.now(dt.UTC))).total_seconds())

    async def keep_fresh(self) -> None:
        """Re-issue at half-life, forever (cancel to stop); a failure is logged and retried."""
        while True:
            await asyncio.sleep(self.renew_in())
            try:
                self.renew()
            except (ValueError, ssl.SSLError, OSError) as exc:
                log.error("proxy stream certificate: re-issue failed, keeping the current "
                          "one: %s", exc)
                await asyncio.sleep(60)
