"""What a SPIFFE ID is, as one rule for the control plane and the data plane (ADR 0097).

Why here, in the contract: the data plane reads a peer's identity from its certificate
(`dataplane.security.spiffe`), the contract checks the IDs a cluster expects (`tls_checks`),
the control plane's CA parses the IDs it signs (`controlplane.ca.spiffe`) -- and the data plane
may not import the control plane.  If they disagreed, a string one side refuses to sign or to
expect could still be taken by the other as an authenticated caller.

The rule (SPIFFE ID spec, section 2), nothing normalised, nothing decoded:
- the scheme is exactly `spiffe://`;
- the trust domain is 1 to 255 of lowercase letters, digits, `.`, `-`, `_` (so no uppercase, no
  port, no userinfo: `:` and `@` are not among them);
- each path segment is one or more of letters, digits, `.`, `-`, `_`, and is neither `.` nor
  `..`; so no empty segment (no trailing slash, no `//`), no percent-encoding, no query, no
  fragment;
- the whole ID is at most 2048 bytes.

An X509-SVID's *leaf* (a workload's certificate) also needs a path: the bare trust domain
`spiffe://td` names no workload (X509-SVID, section 3.1).  `is_svid_id` is that rule; it is the
one the data plane applies to a peer's certificate and to the IDs a cluster expects.

`fullmatch`, not `match` with `$`: `$` also matches before a trailing newline.  One compiled
regular expression; about 0.3 us for a workload ID.
"""

from __future__ import annotations

import re
from typing import Final

SCHEME: Final = "spiffe://"
MAX_LENGTH: Final = 2048
"""Bytes in a SPIFFE ID (spec section 2.3); the IDs here are ASCII, so characters too."""

_TRUST_DOMAIN: Final = r"[a-z0-9._-]{1,255}"
_SEGMENT: Final = r"/(?!\.\.?(?:/|\Z))[A-Za-z0-9._-]+"
"""A path segment with its slash: not `.` or `..`, not empty."""

_SPIFFE_ID: Final = re.compile(rf"spiffe://{_TRUST_DOMAIN}(?:{_SEGMENT})*")
_SVID_ID: Final = re.compile(rf"spiffe://{_TRUST_DOMAIN}(?:{_SEGMENT})+")


def is_spiffe_id(uri: str) -> bool:
    """`uri` is a SPIFFE ID: a trust domain's own (`spiffe://td`) or one with a path."""
    return len(uri) <= MAX_LENGTH and _SPIFFE_ID.fullmatch(uri) is not None


def is_svid_id(uri: str) -> bool:
    """`uri` is a SPIFFE ID an X509-SVID leaf may carry: one with a path."""
    return len(uri) <= MAX_LENGTH and _SVID_ID.fullmatch(uri) is not None

