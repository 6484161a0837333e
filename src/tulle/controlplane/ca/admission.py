"""Who may use the proxy stream, and for which workload (issue 9 item 6, stream half).

A hello is admitted for exactly one workload, proven one of two ways:
- a **bootstrap token** (`tokens.py`) naming that namespace and workload, with a CSR: the token
  is checked, the CSR is checked against the token's identity, the token is consumed (single
  use), and the CSR is signed;
- the workload's **certificate** from this CA, still valid, whose subject names that workload,
  with a proof of its key: an ECDSA signature over `hello_proof_payload(ns, name, time)` made
  within `PROOF_WINDOW`.  A CSR alongside renews at once.

What the hello says about the workload can no longer change the Workload's address, service
account or labels (`Reconciler.register` gets the admitted identity).  A refusal gives the
reason (no token text, no key).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tulle.controlplane.ca.authority import (
    DEFAULT_CERT_TTL,
    CertificateAuthority,
    CsrError,
    Signed,
    check_csr,
)
from tulle.controlplane.ca.spiffe import SpiffeId
from tulle.controlplane.ca.tokens import TokenError, TokenService
from tulle.proxyconfig.stream import Certificate, Hello, hello_proof_payload
from tulle.proxyconfig.stream_trust import is_control_plane_id

PROOF_WINDOW = dt.timedelta(seconds=60)


class AdmissionError(Exception):
    """The hello is refused; the message is sent to the proxy and logged (no secrets)."""


@dataclass(frozen=True, slots=True)
class Admitted:
    namespace: str
    workload: str
    identity: SpiffeId
    via: str
    """"token" or "certificate"."""
    labels: dict[str, str] = field(default_factory=dict)
    """From the token: the labels a Workload made by this hello gets."""
    issued: Certificate | None = None
    """The certificate signed for the hello's CSR, to send before any snapshot."""


def certificate_message(ca: CertificateAuthority, signed: Signed) -> Certificate:
    return Certificate(cert_chain=signed.chain_pem, trust_bundle=ca.trust_bundle(),
                       not_after=int(signed.not_after.timestamp()),
                       not_before=int(signed.issued_at.timestamp()))


class Admission:
    """Checks hellos and signs CSRs; `trust_domain` is read at each call (Mesh may change)."""

    def __init__(self, ca: CertificateAuthority, tokens: TokenService,
                 trust_domain: Callable[[], str], *,
                 cert_ttl: dt.timedelta = DEFAULT_CERT_TTL) -> None:
        self.ca = ca
        self.tokens = tokens
        self.trust_domain = trust_domain
        self.cert_ttl = cert_ttl
        self.signed = 0

    async def admit(self, hello: Hello) -> Admitted:
        w = hello.workload
        if hello.workloads:
            raise AdmissionError("a hello for several workloads cannot be authenticated yet: "
                                 "run one proxy per workload")
        if hello.token and hello.certificate:
            raise AdmissionError("give a bootstrap token or a certificate, not both")
        if hello.token:
            return await self._by_token(hello)
        if hello.certificate:
            return self._by_certificate(hello)
        raise AdmissionError(f"proxy for {w.namespace}/{w.name}: authentication required "
                             f"(a bootstrap token from `tulle token issue`, or the workload's "
                             f"certificate)")

    async def _by_token(self, hello: Hello) -> Admitted:
        w = hello.workload
        try:
            claims = await self.tokens.verify(hello.token)
        except TokenError as exc:
            raise AdmissionError(str(exc)) from None
        if (claims.namespace, claims.workload) != (w.namespace, w.name):
            raise AdmissionError(f"bootstrap token {claims.id} is for workload "
                                 f"{claims.namespace}/{claims.workload}, not "
                                 f"{w.namespace}/{w.name}")
        if not hello.csr:
            raise AdmissionError("a bootstrap token is only accepted with a CSR")
        try:
            identity = SpiffeId(self.trust_domain(), claims.namespace, claims.service_account)
            check_csr(hello.csr, identity)
            not_reserved(identity)
        except (CsrError, ValueError) as exc:
            raise AdmissionError(str(exc)) from None
        try:
            await self.tokens.consume(claims)
        except TokenError as exc:
            raise AdmissionError(str(exc)) from None
        issued = self.sign(hello.csr, identity, w.name)
        return Admitted(w.namespace, w.name, identity, "token", claims.labels, issued)

    def _by_certificate(self, hello: Hello) -> Admitted:
        w = hello.workload
        try:
            identity, workload, leaf = self.ca.verify_workload(hello.certificate)
        except ValueError as exc:
            raise AdmissionError(f"certificate refused: {exc}") from None
        if (identity.namespace, workload) != (w.namespace, w.name):
            raise AdmissionError(f"the certificate is for workload {identity.namespace}/"
                                 f"{workload}, not {w.namespace}/{w.name}")
        now = dt.datetime.now(dt.UTC).timestamp()
        if abs(now - hello.proof_time) > PROOF_WINDOW.total_seconds():
            raise AdmissionError("certificate proof missing or outside the time window")
        key = leaf.public_key()
        try:
            sig = base64.b64decode(hello.proof, validate=True)
            assert isinstance(key, ec.EllipticCurvePublicKey)
            key.verify(sig, hello_proof_payload(w.namespace, w.name, hello.proof_time),
                       ec.ECDSA(hashes.SHA256()))
        except (binascii.Error, ValueError, AssertionError, InvalidSignature):
            raise AdmissionError("certificate proof does not verify with its key") from None
        issued = None
        if hello.csr:
            try:
                issued = self.sign(hello.csr, identity, w.name)
            except CsrError as exc:
                raise AdmissionError(str(exc)) from None
        return Admitted(w.namespace, w.name, identity, "certificate", {}, issued)

    def sign(self, csr: str, identity: SpiffeId, workload: str) -> Certificate:
        """Sign for an admitted caller; CsrError for a CSR that is refused."""
        not_reserved(identity)
        signed = self.ca.sign_csr(csr, identity, workload, ttl=self.cert_ttl)
        self.signed += 1
        return certificate_message(self.ca, signed)


def not_reserved(identity: SpiffeId) -> None:
    """CsrError for the control plane's own SPIFFE ID: a workload holding it could play the
    control plane to proxies (ADR 0034)."""
    if is_control_plane_id(identity.uri):
        raise CsrError(f"{identity.uri} is the control plane's own identity; no workload may "
                       f"have it")
