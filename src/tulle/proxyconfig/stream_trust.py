"""How a proxy knows it talks to *its* control plane (ADR 0034): the CA pin and the server's ID.

Why here, with the stream protocol: both ends must agree on three things, and the data plane
may not import the control plane.
- The **CA pin**, `sha256:<64 hex>`: the SHA-256 of a CA certificate's SubjectPublicKeyInfo
  (DER), like kubeadm's `--discovery-token-ca-cert-hash`.  It pins the key, so a root re-issued
  with the same key still matches.  The control plane puts the pins of its roots into every
  bootstrap token it issues; a proxy with nothing but a token checks the chain the server sent
  in the TLS handshake against them before it sends anything.
- The **control plane's SPIFFE ID**: `spiffe://<trust-domain>/ns/tulle-system/sa/control-plane`.
  The proxy accepts a server certificate from the mesh CA only with this ID, so a workload's
  certificate (same CA, another ID) cannot play the control plane; the CA never signs this ID
  for a workload.
- **Reading the pins out of a token** (`tbt2.<claims>.<mac>`): the proxy cannot check the MAC
  (only the control plane holds its key) and need not; the token is as trustworthy as the
  channel that delivered it, exactly as a kubeadm join command.  A `tbt1` token carries no pin.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tulle.proxyconfig.spiffe_id import is_svid_id

CONTROL_PLANE_NAMESPACE = "tulle-system"
CONTROL_PLANE_SERVICE_ACCOUNT = "control-plane"
PIN_PREFIX = "sha256:"
_PIN = re.compile(r"^sha256:[0-9a-f]{64}$")
TOKEN_PREFIX_PINNED = "tbt2"
"""Tokens that carry the CA pins (claim `ca`)."""
TOKEN_PREFIX_UNPINNED = "tbt1"
"""Tokens issued before the stream moved to TLS: no pin."""


class PinError(ValueError):
    """A pin or a token that cannot say which CA to trust; the message holds no token text."""


def control_plane_path() -> str:
    return f"/ns/{CONTROL_PLANE_NAMESPACE}/sa/{CONTROL_PLANE_SERVICE_ACCOUNT}"


def control_plane_id(trust_domain: str) -> str:
    return f"spiffe://{trust_domain}{control_plane_path()}"


def is_control_plane_id(uri: str) -> bool:
    """`uri` names the control plane (in any trust domain: the CA that signed it decides)."""
    if not is_svid_id(uri):
        return False
    domain, slash, path = uri[len("spiffe://"):].partition("/")
    return bool(domain) and bool(slash) and "/" + path == control_plane_path()


def ca_pin(cert: x509.Certificate | bytes) -> str:
    """`sha256:<hex>` of the certificate's SubjectPublicKeyInfo; `cert` may be DER bytes."""
    c = x509.load_der_x509_certificate(cert) if isinstance(cert, bytes) else cert
    spki = c.public_key().public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)
    return PIN_PREFIX + hashlib.sha256(spki).hexdigest()


def check_pin(text: str) -> str:
    """A well-formed pin (lower-cased), or PinError."""
    pin = text.strip().lower()
    if not _PIN.match(pin):
        raise PinError(f"CA pin {text[:80]!r}: expected sha256:<64 hex digits>")
    return pin


def token_pins(token: str) -> list[str]:
    """The CA pins a bootstrap token carries: [] for a `tbt1` token, PinError if malformed."""
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] not in (TOKEN_PREFIX_PINNED, TOKEN_PREFIX_UNPINNED):
        raise PinError("bootstrap token malformed (expected tbt2.<claims>.<mac>)")
    if parts[0] == TOKEN_PREFIX_UNPINNED:
        return []
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        pins = claims["ca"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise PinError("bootstrap token malformed: no readable CA pin") from None
    if not isinstance(pins, list) or not pins:
        raise PinError("bootstrap token malformed: no readable CA pin")
    return [check_pin(str(p)) for p in pins]
