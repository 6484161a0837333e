"""Staged root rotation of the mesh CA: the stages, their transitions and when each is done.

Why stages (ADR 0035): a proxy only accepts a peer whose certificate chains to a root in its
trust bundle.  Swapping the root in one step fails every handshake between a proxy that has
moved and one that has not; linkerd/linkerd2#4808 is what an expired anchor does to a mesh.
So a rotation goes through three stages, each one safe while proxies are in either state:

    (idle)    one root; it signs.
    add-root  the new CA exists; bundles hold BOTH roots; the OLD one still signs.
              done when every connected proxy has applied the two-root bundle.
    reissue   the NEW one signs; bundles still hold both; proxies are told to renew now.
              done when every connected proxy serves a certificate from the new CA.
    retire    bundles hold the new root only; certificates of the old one are refused
              (by proxies, and by the stream's admission).
              done when every connected proxy has applied the one-root bundle -> idle.

This module is pure: `CAState` is the whole truth (kept in the store by `keeper.py`, so HA
replicas agree and a rotation survives restarts: it is resumable), and `progress()` says, for
the proxies one replica serves, which have not moved yet and so whether the stage is done.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from tulle.controlplane.ca.authority import CAError, CertificateAuthority
from tulle.proxyconfig.stream import bundle_id

IDLE = ""
ADD_ROOT = "add-root"
REISSUE = "reissue"
RETIRE = "retire"
STAGES = (ADD_ROOT, REISSUE, RETIRE)
"""In order; the stage after the last is idle."""
FEATURE = "ca-rotation"
"""The proxy feature that says it takes `TrustUpdate` messages (proxyconfig/features.py)."""


class RotationError(Exception):
    """A rotation step that cannot be taken now; the message says why (HTTP 409)."""


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, hex: how a CA certificate is named in status."""
    return cert.fingerprint(hashes.SHA256()).hex()


def subject(cert: x509.Certificate) -> str:
    """The subject as RFC 4514 text, the serial number named (generated roots carry one)."""
    return cert.subject.rfc4514_string({NameOID.SERIAL_NUMBER: "serialNumber"})


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True, slots=True)
class CAState:
    """The mesh CA at one moment: who signs, which roots proxies trust, the stage."""

    signing: CertificateAuthority
    roots: tuple[x509.Certificate, ...]
    """The trust bundle, in order (the older root first while both are trusted)."""
    stage: str = IDLE
    next: CertificateAuthority | None = None
    """`add-root` only: the CA that signs from `reissue` on."""
    previous: tuple[x509.Certificate, ...] = ()
    """`reissue` and `retire`: the old CA's chain; during `reissue` the stream still admits
    its certificates (and the old CA, `previous_ca`, signs the stream's own)."""
    started_at: int = 0
    token_secret: bytes | None = field(default=None, repr=False)
    """The bootstrap tokens' HMAC secret, pinned at the first rotation (it is derived from the
    CA key, which changes): outstanding tokens stay valid across rotations."""
    previous_ca: CertificateAuthority | None = None
    """`reissue` only: the old CA with its key, which still signs the stream's own server
    certificate.  A proxy off its stream through `add-root` trusts the old root only; served
    by the new CA from `reissue` on, it could not verify the stream when it came back, so it
    never received the two-root bundle and was left behind.  The key goes at `retire`."""

    @classmethod
    def single(cls, ca: CertificateAuthority) -> CAState:
        return cls(ca, (ca.root,))

    # -- what proxies get -------------------------------------------------------------------

    def bundle(self) -> list[str]:
        return [pem(r) for r in self.roots]

    def bundle_id(self) -> str:
        """Names a bundle in `TrustUpdate` / `TrustAck` (and in status)."""
        return bundle_id(self.bundle())

    def signing_id(self) -> str:
        return fingerprint(self.signing.cert)

    def stream_ca(self) -> CertificateAuthority:
        """The CA that signs the stream's server certificate: the old one through `reissue`
        (every proxy, moved or not, trusts its root), else the one that signs."""
        if self.stage == REISSUE and self.previous_ca is not None:
            return self.previous_ca
        return self.signing

    def issuers(self) -> list[x509.Certificate]:
        """CA certificates whose workload certificates the stream admits now."""
        if self.stage == REISSUE and self.previous:
            return [self.signing.cert, self.previous[0]]
        return [self.signing.cert]

    # -- transitions --------------------------------------------------------------------------

    def start(self, new: CertificateAuthority, now: dt.datetime) -> CAState:
        """Begin a rotation to `new` (stage add-root)."""
        if self.stage != IDLE:
            raise RotationError(f"a rotation is already at stage {self.stage}: resume it "
                                f"(`tulle ca rotate`) or see `tulle ca rotate --status`")
        if fingerprint(new.cert) == fingerprint(self.signing.cert):
            raise RotationError("the new CA is the CA in use")
        roots = list(self.roots)
        if fingerprint(new.root) not in {fingerprint(r) for r in roots}:
            roots.append(new.root)
        secret = self.token_secret
        if secret is None:
            from tulle.controlplane.ca.tokens import PURPOSE

            secret = self.signing.derive_secret(PURPOSE)
        return replace(self, stage=ADD_ROOT, next=new, roots=tuple(roots),
                       started_at=int(now.timestamp()), token_secret=secret)

    def advance(self) -> CAState:
        """The next stage (callers check `progress().done` first)."""
        if self.stage == ADD_ROOT:
            assert self.next is not None
            return replace(self, stage=REISSUE, signing=self.next, next=None,
                           previous=tuple(self.signing.chain), previous_ca=self.signing)
        if self.stage == REISSUE:
            return replace(self, stage=RETIRE, roots=(self.signing.root,), previous_ca=None)
        if self.stage == RETIRE:
            return replace(self, stage=IDLE, previous=(), started_at=0)
        raise RotationError("no rotation in progress: start one with `tulle ca rotate`")


@dataclass(frozen=True, slots=True)
class ProxyView:
    """What a replica knows of one connected proxy, for the stage checks."""

    name: str
    """`namespace/name`."""
    takes_updates: bool
    bundle_id: str
    """The bundle it last confirmed (`TrustAck`)."""
    cert_issuer: str
    """Fingerprint of the CA certificate that signed the certificate it serves."""


@dataclass(frozen=True, slots=True)
class Progress:
    stage: str
    waiting_for: str
    """What the stage waits for, in words."""
    pending: dict[str, str]
    """Proxies not moved yet -> why."""

    @property
    def done(self) -> bool:
        return self.stage != IDLE and not self.pending


def progress(state: CAState, proxies: Iterable[ProxyView]) -> Progress:
    """Which connected proxies hold up the current stage."""
    if state.stage == IDLE:
        return Progress(IDLE, "", {})
    bid, signer = state.bundle_id(), state.signing_id()
    pending: dict[str, str] = {}
    for p in proxies:
        if not p.takes_updates:
            pending[p.name] = (f"the proxy does not take trust updates (feature {FEATURE}); "
                               f"upgrade or restart it with a new bootstrap token")
        elif p.bundle_id != bid:
            pending[p.name] = f"has not applied trust bundle {bid} yet"
        elif state.stage == REISSUE and p.cert_issuer != signer:
            pending[p.name] = "still serves a certificate from the old CA"
    waiting = {ADD_ROOT: "every connected proxy to trust both roots",
               REISSUE: "every connected proxy to serve a certificate from the new CA",
               RETIRE: "every connected proxy to drop the old root"}[state.stage]
    return Progress(state.stage, waiting, dict(sorted(pending.items())))


# -- the store record ---------------------------------------------------------------------------


def to_spec(state: CAState) -> dict[str, object]:
    """The CA record's spec (`persist.py` wrote the first two keys; they keep their meaning:
    the CA that signs now)."""
    spec: dict[str, object] = {"certChainPem": state.signing.chain_pem(),
                               "keyPem": state.signing.key_pem(),
                               "trustedRootsPem": state.bundle()}
    if state.token_secret is not None:
        spec["tokenSecret"] = base64.b64encode(state.token_secret).decode()
    if state.stage != IDLE:
        rot: dict[str, object] = {"stage": state.stage, "startedAt": state.started_at}
        if state.next is not None:
            rot["nextChainPem"] = state.next.chain_pem()
            rot["nextKeyPem"] = state.next.key_pem()
        if state.previous:
            rot["previousChainPem"] = "".join(pem(c) for c in state.previous)
        if state.previous_ca is not None:
            rot["previousKeyPem"] = state.previous_ca.key_pem()
        spec["rotation"] = rot
    return spec


def from_spec(spec: dict[str, object]) -> CAState:
    """The state in a CA record; CAError for a record that does not hold one."""
    ca = CertificateAuthority.from_pem(str(spec.get("certChainPem", "")).encode(),
                                       str(spec.get("keyPem", "")).encode(),
                                       where="the stored CA")
    roots_pem = spec.get("trustedRootsPem")
    if isinstance(roots_pem, list) and roots_pem:
        try:
            roots = tuple(x509.load_pem_x509_certificate(str(p).encode()) for p in roots_pem)
        except ValueError as exc:
            raise CAError("the stored CA: trustedRootsPem is not PEM X.509") from exc
    else:
        roots = (ca.root,)
    secret_b64 = spec.get("tokenSecret")
    secret = base64.b64decode(str(secret_b64)) if secret_b64 else None
    rot = spec.get("rotation")
    if not isinstance(rot, dict):
        return CAState(ca, roots, token_secret=secret)
    stage = str(rot.get("stage", ""))
    if stage not in STAGES:
        raise CAError(f"the stored CA: rotation.stage {stage!r} is not one of "
                      f"{', '.join(STAGES)}")
    nxt = None
    if rot.get("nextChainPem"):
        nxt = CertificateAuthority.from_pem(str(rot["nextChainPem"]).encode(),
                                            str(rot.get("nextKeyPem", "")).encode(),
                                            where="the stored CA (rotation.next)")
    prev: tuple[x509.Certificate, ...] = ()
    if rot.get("previousChainPem"):
        prev = tuple(x509.load_pem_x509_certificates(str(rot["previousChainPem"]).encode()))
    if stage == ADD_ROOT and nxt is None:
        raise CAError("the stored CA: rotation at add-root without the next CA")
    prev_ca = None
    if stage == REISSUE and rot.get("previousKeyPem") and rot.get("previousChainPem"):
        prev_ca = CertificateAuthority.from_pem(str(rot["previousChainPem"]).encode(),
                                                str(rot["previousKeyPem"]).encode(),
                                                where="the stored CA (rotation.previous)")
    return CAState(ca, roots, stage, nxt, prev, int(str(rot.get("startedAt", 0))), secret,
                   prev_ca)
