"""The proxy's side of the TLS stream (ADR 0034): verify the control plane before saying a word.

Why its own module: the rule "a proxy never sends a token or a proof to a server it has not
verified" must hold on every path (first contact, reconnect, another replica), so connecting
is one function that returns a stream only once the server is verified.

What the proxy trusts, in this order:
1. the mesh bundle from the last `Certificate` it received (`learn`): after its first
   certificate a proxy follows the CA's own bundle, so a rotated root reaches it;
2. `--ca-file` (explicit anchors);
3. the pins in its bootstrap token (first contact): it completes a handshake without
   verification, reads the chain the server sent, keeps the certificate whose SPKI matches a
   pin (a CA), closes that connection without sending anything, and connects again verifying
   against that root — OpenSSL does the chain check, as on every later connection.
A server that does not verify with a bundle learned that way (a bundle kept on disk from before
a rotation that retired its root, or from another mesh: ADR 0123) is tried once more by the
token's pins, when there are any: they are the operator's word for this mesh's CA, as at first
contact.  The server certificate must also carry the control plane's SPIFFE ID
(`stream_trust.py`): a workload's certificate from the same CA is refused.
`insecure_plaintext()` is the explicit development opt-out (`--stream-plaintext`), logged as
insecure.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tulle.dataplane.security.spiffe import spiffe_id
from tulle.proxyconfig.stream_trust import PinError, ca_pin, is_control_plane_id, token_pins

log = logging.getLogger("tulle.agent")

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class StreamTrustError(ConnectionError):
    """The server is not verifiably our control plane (or we have nothing to verify it by);
    nothing was sent.  A ConnectionError: the agent backs off and tries again."""


class StreamTrust:
    """How the agent verifies the control plane; see the module docstring."""

    def __init__(self, *, pins: Sequence[str] = (), ca_pems: Sequence[str] = (),
                 plaintext: bool = False) -> None:
        self.pins = list(pins)
        self.anchors = list(ca_pems)
        """PEM certificates trusted now (from --ca-file, a pin, or the mesh bundle)."""
        self.plaintext = plaintext
        self.refusals = 0
        """Servers refused (tests and the admin read it)."""
        self.learned = False
        """`anchors` came from a mesh bundle (`learn`), not from --ca-file or a pin."""

    def __repr__(self) -> str:
        mode = "plaintext" if self.plaintext else f"{len(self.anchors)} anchors"
        return f"StreamTrust({mode}, {len(self.pins)} pins)"

    @classmethod
    def insecure_plaintext(cls) -> StreamTrust:
        log.warning("INSECURE: the proxy stream runs WITHOUT TLS (--stream-plaintext): the "
                    "bootstrap token and certificate proofs cross the network in the clear; "
                    "for development only")
        return cls(plaintext=True)

    @classmethod
    def from_options(cls, token: str, ca_file: Path | None = None) -> StreamTrust:
        """Anchors from `ca_file` and pins from `token`; ValueError saying what is missing when
        neither can verify a control plane (a `tbt1` token without --ca-file)."""
        pems: list[str] = []
        if ca_file is not None:
            pems = _read_ca_file(ca_file)
        pins: list[str] = []
        if token:
            try:
                pins = token_pins(token)
            except PinError as exc:
                raise ValueError(str(exc)) from None
        if not pems and not pins:
            raise ValueError("nothing to verify the control plane with: the bootstrap token "
                             "carries no CA pin (a tbt1 token, from before the stream used "
                             "TLS: issue a new one with `tulle token issue`) and no --ca-file "
                             "was given")
        return cls(pins=pins, ca_pems=pems)

    def learn(self, bundle: Sequence[str]) -> None:
        """Trust the mesh bundle received with a certificate from now on."""
        if bundle:
            self.anchors = list(bundle)
            self.learned = True

    async def connect(self, host: str, port: int, timeout: float = 5.0) -> Stream:
        """A stream to a verified control plane, or StreamTrustError / OSError; nothing is
        written to a server that was not verified."""
        if self.plaintext:
            return await asyncio.wait_for(asyncio.open_connection(host, port), timeout=timeout)
        if not self.anchors:
            if not self.pins:
                raise StreamTrustError("nothing to verify the control plane with")
            self.anchors = [await self._fetch_pinned_root(host, port, timeout)]
        try:
            return await self._connect_verified(host, port, timeout)
        except StreamTrustError:
            if not (self.learned and self.pins):
                raise
        # The bundle held is not this control plane's CA (any more): the token's pin is.
        log.warning("control plane %s:%d: not verified by the mesh bundle held (a rotation "
                    "retired its root, or it is another mesh's); trying the bootstrap token's "
                    "CA pin", host, port)
        root = await self._fetch_pinned_root(host, port, timeout)
        held, self.anchors, self.learned = self.anchors, [root], False
        try:
            return await self._connect_verified(host, port, timeout)
        except BaseException:
            self.anchors, self.learned = held, True
            raise

    async def _connect_verified(self, host: str, port: int, timeout: float) -> Stream:
        ctx = client_context()
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            ctx.load_verify_locations(cadata="".join(self.anchors))
        except ssl.SSLError as exc:
            raise StreamTrustError(f"the trusted CA certificates do not load: {exc}") from None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, server_hostname=host),
                timeout=timeout)
        except ssl.SSLCertVerificationError as exc:
            self.refusals += 1
            log.warning("control plane %s:%d refused: its certificate does not verify with "
                        "the mesh CA (%s); nothing sent", host, port, exc.verify_message)
            raise StreamTrustError(f"{host}:{port}: server certificate not from the mesh CA "
                                   f"({exc.verify_message})") from None
        uri = spiffe_id(writer.get_extra_info("ssl_object"))
        if not is_control_plane_id(uri):
            self.refusals += 1
            writer.transport.abort()
            log.warning("control plane %s:%d refused: its certificate names %s, not the "
                        "control plane; nothing sent", host, port, uri or "no SPIFFE ID")
            raise StreamTrustError(f"{host}:{port}: server certificate is for "
                                   f"{uri or 'no SPIFFE ID'}, not the control plane")
        return reader, writer

    async def _fetch_pinned_root(self, host: str, port: int, timeout: float) -> str:
        """First contact: the CA certificate in the server's chain that matches a pin (PEM).
        The connection is closed without a byte of application data."""
        ctx = client_context()
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=host), timeout=timeout)
        try:
            chain = unverified_chain(writer.get_extra_info("ssl_object"))
        finally:
            writer.transport.abort()
        for der in chain:
            cert = x509.load_der_x509_certificate(der)
            if ca_pin(cert) in self.pins and _is_ca(cert):
                return cert.public_bytes(serialization.Encoding.PEM).decode()
        self.refusals += 1
        log.warning("control plane %s:%d refused: its certificate chain does not lead to the "
                    "CA pinned by the bootstrap token; nothing sent", host, port)
        raise StreamTrustError(f"{host}:{port}: server's chain has no CA matching the token's "
                               f"pin")


def client_context() -> ssl.SSLContext:
    """TLS 1.3, no verification yet (the caller turns it on with its anchors)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # the SPIFFE ID is checked instead (module docstring)
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def unverified_chain(ssl_object: object) -> list[bytes]:
    """The DER certificates the server sent.  Public API from Python 3.13; on 3.10-3.12 the
    same method exists on the `_ssl` object underneath."""
    fn = getattr(ssl_object, "get_unverified_chain", None)
    if fn is None:
        fn = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if fn is None:
        raise StreamTrustError("this Python cannot read the server's certificate chain: give "
                               "--ca-file")
    out: list[bytes] = []
    for c in fn() or ():
        out.append(c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER))  # type: ignore[attr-defined]
    return out


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _read_ca_file(path: Path) -> list[str]:
    """The PEM certificates in `path`; ValueError naming the file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"--ca-file {path}: {exc.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"--ca-file {path}: no PEM certificate in it") from None
    return [c.public_bytes(serialization.Encoding.PEM).decode() for c in certs]
