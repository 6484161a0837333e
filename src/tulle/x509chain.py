"""Whether a certificate chain leads to a trusted root: one walk for the control plane's CA
(a workload's chain presented for renewal, `controlplane/ca/authority.py`) and the proxy's own
identity cache (a kept certificate read back from disk, `dataplane/identity_cache.py`).

Why a top-level module: both layers must judge a chain the same way (by signature, through CA
certificates that are valid and within their path length, as OpenSSL checks on every peer's
handshake), and neither may import the other.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Whether `issuer` signed `cert` (names, then the signature)."""
    if cert.issuer != issuer.subject:
        return False
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None


def valid_at(cert: x509.Certificate, now: dt.datetime) -> bool:
    return cert.not_valid_before_utc <= now <= cert.not_valid_after_utc


def chains_to_root(chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate],
                   now: dt.datetime, *, max_intermediates: int,
                   roots_valid: bool = False) -> bool:
    """Whether `chain` leads from its leaf (`chain[0]`), through at most `max_intermediates`
    CA certificates valid `now` and within their pathLenConstraint, to one of `roots` (by
    signature; the root need not be in the chain).  `roots_valid`: the root must be valid
    `now` too."""
    def rooted(cert: x509.Certificate) -> bool:
        return any(issued_by(cert, r) and (not roots_valid or valid_at(r, now)) for r in roots)

    cur = chain[0]
    for below, nxt in enumerate(chain[1:1 + max_intermediates]):
        if rooted(cur):
            return True
        bc = basic_constraints(nxt)
        if bc is None or not bc.ca or not issued_by(cur, nxt):
            return False
        # `below`: CA certificates between it and the leaf, which its pathLenConstraint
        # bounds (RFC 5280 4.2.1.9).
        if bc.path_length is not None and bc.path_length < below:
            return False
        if not valid_at(nxt, now):
            return False
        cur = nxt
    return rooted(cur)


__all__ = ["basic_constraints", "chains_to_root", "issued_by", "valid_at"]
