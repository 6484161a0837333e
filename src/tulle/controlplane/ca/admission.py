"""Who may use the proxy stream, and for which workload (issue 9 item 6, stream half).

A hello is admitted for its workload, and a node's hello for each further workload it fronts
(`Hello.credentials`, ADR 0032), each proven on its own one of two ways:
- a **bootstrap token** (`tokens.py`) naming that namespace and workload, with a CSR: the token
  is checked, the CSR is checked against the token's identity, the token is consumed (single
  use), the hello's registration is accepted, and the CSR is signed; a refusal after the
  consume releases the token, so only an admitted hello spends it;
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
import dataclasses
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tulle.controlplane.ca.authority import (
    CLOCK_SKEW,
    DEFAULT_CERT_TTL,
    CertificateAuthority,
    CsrError,
    Signed,
    check_csr,
    verify_workload,
)
from tulle.controlplane.ca.rotation import CAState, fingerprint
from tulle.controlplane.ca.spiffe import SpiffeId
from tulle.controlplane.ca.tokens import Claims, TokenError, TokenService
from tulle.proxyconfig.stream import Certificate, Hello, WorkloadCredential, hello_proof_payload
from tulle.proxyconfig.stream_trust import is_control_plane_id
from tulle.x509chain import issued_by

PROOF_WINDOW = dt.timedelta(seconds=60)

Accept = Callable[["Admitted"], Awaitable[None]]
"""The last check of an admission (the session's registration of the workloads), given it
before any certificate is signed; raising refuses the hello and releases its tokens."""


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
    node: tuple[Admitted, ...] = ()
    """The further workloads a node fronts, each admitted on its own credential (ADR 0032)."""
    cert_issuer: str = ""
    """Fingerprint of the CA certificate that signed the certificate the proxy serves (the
    one issued now, else the one it presented): CA rotation tracks who has moved."""
    cert_not_before: int = 0
    cert_not_after: int = 0

    def all(self) -> tuple[Admitted, ...]:
        """This workload, then the node's others: one entry per fronted workload."""
        return (self, *self.node)


@dataclass(frozen=True, slots=True)
class _Checked:
    """A credential that verified; nothing consumed or signed yet."""

    identity: SpiffeId
    via: str
    labels: dict[str, str]
    claims: Claims | None
    issuer: str = ""
    """With a presented certificate: the CA that signed it, and its validity."""
    not_before: int = 0
    not_after: int = 0


def certificate_message(ca: CertificateAuthority | CAState, signed: Signed) -> Certificate:
    bundle = ca.bundle() if isinstance(ca, CAState) else ca.trust_bundle()
    return Certificate(cert_chain=signed.chain_pem, trust_bundle=bundle,
                       not_after=int(signed.not_after.timestamp()),
                       not_before=int(signed.issued_at.timestamp()))


class Admission:
    """Checks hellos and signs CSRs; `trust_domain` is read at each call (Mesh may change).

    `state` is the CA in force (rotation.py): who signs, which roots go into bundles, whose
    certificates a hello may present; `use()` replaces it when a rotation moves on."""

    def __init__(self, ca: CertificateAuthority | CAState, tokens: TokenService,
                 trust_domain: Callable[[], str], *,
                 cert_ttl: dt.timedelta = DEFAULT_CERT_TTL,
                 aliases: Callable[[], tuple[str, ...]] = tuple) -> None:
        """`aliases`: `Mesh.spec.trustDomainAliases`, read at each call: a certificate in one
        of them is still this mesh's (a trust-domain migration)."""
        self.state = ca if isinstance(ca, CAState) else CAState.single(ca)
        self.tokens = tokens
        self.trust_domain = trust_domain
        self.aliases = aliases
        self.cert_ttl = cert_ttl
        self.signed = 0

    @property
    def ca(self) -> CertificateAuthority:
        """The CA that signs now."""
        return self.state.signing

    def use(self, state: CAState) -> None:
        self.state = state

    async def admit(self, hello: Hello, accept: Accept | None = None) -> Admitted:
        """The hello's workload, and each further one it fronts (`Admitted.node`), or
        AdmissionError naming the first that is refused.

        All or nothing, so a refused hello burns no token: every credential is checked
        first, then the hello's tokens are consumed in one store write (the single-use check,
        atomic: of two hellos with one token one loses here), then `accept` runs with the
        admission as it will be (no certificate yet) -- the registration, which refuses a
        hello that says what it may not change by raising -- and the CSRs are signed last.
        If `accept` or a signature refuses, the tokens are released (`TokenService.release`)
        and the exception propagates.  Consuming before `accept` rather than after keeps a
        loser of the race from writing anything."""
        w = hello.workload
        own = WorkloadCredential(namespace=w.namespace, name=w.name, token=hello.token,
                                 csr=hello.csr, certificate=hello.certificate,
                                 proof=hello.proof, proof_time=hello.proof_time)
        creds = [own, *self._node_credentials(hello)]
        checked = [await self._check(c) for c in creds]
        claims = [c.claims for c in checked if c.claims is not None]
        try:
            await self.tokens.consume(*claims)
        except TokenError as exc:
            raise AdmissionError(str(exc)) from None
        try:
            if accept is not None:
                await accept(_node([self._unsigned(cred, c)
                                    for cred, c in zip(creds, checked, strict=True)]))
            admitted = [self._admit(cred, c) for cred, c in zip(creds, checked, strict=True)]
        except BaseException:
            await self.tokens.release(*claims)
            raise
        return _node(admitted)

    @staticmethod
    def _node_credentials(hello: Hello) -> list[WorkloadCredential]:
        """The credentials of `hello.workloads`, in their order; exactly one each."""
        by_key: dict[tuple[str, str], WorkloadCredential] = {}
        for c in hello.credentials:
            if (c.namespace, c.name) in by_key:
                raise AdmissionError(f"two credentials for workload {c.namespace}/{c.name}")
            by_key[(c.namespace, c.name)] = c
        out = []
        seen = {(hello.workload.namespace, hello.workload.name)}
        for x in hello.workloads:
            if (x.namespace, x.name) in seen:
                raise AdmissionError(f"workload {x.namespace}/{x.name} is named twice in the "
                                     f"hello")
            seen.add((x.namespace, x.name))
            found = by_key.pop((x.namespace, x.name), None)
            if found is None:
                raise AdmissionError(f"proxy for {hello.workload.namespace}/"
                                     f"{hello.workload.name}: no credential for the further "
                                     f"workload {x.namespace}/{x.name} (each workload a node "
                                     f"fronts needs its own token or certificate)")
            out.append(found)
        if by_key:
            extra = ", ".join(f"{ns}/{n}" for ns, n in sorted(by_key))
            raise AdmissionError(f"credentials for workloads the hello does not front: {extra}")
        return out

    async def _check(self, c: WorkloadCredential) -> _Checked:
        """Verify one credential without side effects (no token consumed, nothing signed)."""
        if c.token and c.certificate:
            raise AdmissionError(f"workload {c.namespace}/{c.name}: give a bootstrap token or "
                                 f"a certificate, not both")
        if c.token:
            return await self._check_token(c)
        if c.certificate:
            return self._check_certificate(c)
        raise AdmissionError(f"proxy for {c.namespace}/{c.name}: authentication required "
                             f"(a bootstrap token from `tulle token issue`, or the workload's "
                             f"certificate)")

    async def _check_token(self, c: WorkloadCredential) -> _Checked:
        try:
            claims = await self.tokens.verify(c.token)
        except TokenError as exc:
            raise AdmissionError(str(exc)) from None
        if (claims.namespace, claims.workload) != (c.namespace, c.name):
            raise AdmissionError(f"bootstrap token {claims.id} is for workload "
                                 f"{claims.namespace}/{claims.workload}, not "
                                 f"{c.namespace}/{c.name}")
        if not c.csr:
            raise AdmissionError("a bootstrap token is only accepted with a CSR")
        try:
            identity = SpiffeId(self.trust_domain(), claims.namespace, claims.service_account)
            check_csr(c.csr, identity)
            not_reserved(identity)
        except (CsrError, ValueError) as exc:
            raise AdmissionError(str(exc)) from None
        return _Checked(identity, "token", claims.labels, claims)

    def _check_certificate(self, c: WorkloadCredential) -> _Checked:
        try:
            identity, workload, leaf = verify_workload(c.certificate, self.state.issuers(),
                                                       roots=self.state.roots)
        except ValueError as exc:
            raise AdmissionError(f"certificate refused: {exc}") from None
        if (identity.namespace, workload) != (c.namespace, c.name):
            raise AdmissionError(f"the certificate is for workload {identity.namespace}/"
                                 f"{workload}, not {c.namespace}/{c.name}")
        td = self.trust_domain()
        if identity.trust_domain != td and identity.trust_domain not in self.aliases():
            # A CA beside ours under the operator's root chains to a trusted root too; its
            # identities are not this mesh's, and this CA must not sign them (zero-trust
            # audit, ADR 0096; SPIFFE: a signing authority issues its own trust domain only).
            raise AdmissionError(
                f"the certificate is in trust domain {identity.trust_domain}, not this mesh's "
                f"({td}): list it in Mesh.spec.trustDomainAliases while migrating, or give "
                "the proxy a new bootstrap token")
        now = dt.datetime.now(dt.UTC).timestamp()
        if abs(now - c.proof_time) > PROOF_WINDOW.total_seconds():
            raise AdmissionError("certificate proof missing or outside the time window")
        key = leaf.public_key()
        try:
            sig = base64.b64decode(c.proof, validate=True)
            assert isinstance(key, ec.EllipticCurvePublicKey)
            key.verify(sig, hello_proof_payload(c.namespace, c.name, c.proof_time),
                       ec.ECDSA(hashes.SHA256()))
        except (binascii.Error, ValueError, AssertionError, InvalidSignature):
            raise AdmissionError("certificate proof does not verify with its key") from None
        if c.csr:  # a renewal at once: refuse a bad CSR before anything is consumed
            try:
                check_csr(c.csr, identity)
            except CsrError as exc:
                raise AdmissionError(str(exc)) from None
        # When it was issued: the CA backdates notBefore by CLOCK_SKEW, and `tulle check`
        # measures the lifetime used from issue (a 60 s certificate read as 6 min long was
        # past 2/3 of it at once after a reconnect).
        issued = min(leaf.not_valid_before_utc + CLOCK_SKEW, dt.datetime.now(dt.UTC))
        return _Checked(identity, "certificate", {}, None, _issuer_of(leaf, self.state),
                        int(issued.timestamp()), int(leaf.not_valid_after_utc.timestamp()))

    @staticmethod
    def _unsigned(c: WorkloadCredential, checked: _Checked) -> Admitted:
        """The admission of a checked credential, before its CSR (if any) is signed."""
        return Admitted(c.namespace, c.name, checked.identity, checked.via, checked.labels,
                        None, cert_issuer=checked.issuer, cert_not_before=checked.not_before,
                        cert_not_after=checked.not_after)

    def _admit(self, c: WorkloadCredential, checked: _Checked) -> Admitted:
        if not c.csr:
            return self._unsigned(c, checked)
        try:
            issued = self.sign(c.csr, checked.identity, c.name)
        except CsrError as exc:
            raise AdmissionError(str(exc)) from None
        return Admitted(c.namespace, c.name, checked.identity, checked.via, checked.labels,
                        issued, cert_issuer=self.state.signing_id(),
                        cert_not_before=issued.not_before, cert_not_after=issued.not_after)

    def sign(self, csr: str, identity: SpiffeId, workload: str) -> Certificate:
        """Sign for an admitted caller; CsrError for a CSR that is refused."""
        not_reserved(identity)
        signed = self.state.signing.sign_csr(csr, identity, workload, ttl=self.cert_ttl)
        self.signed += 1
        return certificate_message(self.state, signed)


def _node(admitted: list[Admitted]) -> Admitted:
    """The hello's own admission, carrying the further workloads'."""
    return dataclasses.replace(admitted[0], node=tuple(admitted[1:]))


def not_reserved(identity: SpiffeId) -> None:
    """CsrError for the control plane's own SPIFFE ID: a workload holding it could play the
    control plane to proxies (ADR 0034)."""
    if is_control_plane_id(identity.uri):
        raise CsrError(f"{identity.uri} is the control plane's own identity; no workload may "
                       f"have it")


def _issuer_of(leaf: x509.Certificate, state: CAState) -> str:
    """The fingerprint of the CA certificate in `state.issuers()` that signed `leaf`."""
    return next((fingerprint(i) for i in state.issuers() if issued_by(leaf, i)), "")
