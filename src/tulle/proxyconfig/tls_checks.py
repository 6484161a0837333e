"""Semantic checks of TLS settings and key material: section references, SPIFFE IDs, PEM
shapes, and no private key in a field that is shown as public.

Kept apart from `validate.py` so the rules that guard secrets sit in one place; listeners,
filter chains (`chain_checks.py`) and clusters all check their `tls` with `tls_ref_errors`.
"""

from __future__ import annotations

import re

from tulle.errors import FieldError
from tulle.proxyconfig.model import ProxyConfig, TLSContext
from tulle.proxyconfig.spiffe_id import is_svid_id


def tls_ref_errors(tls: TLSContext, p: str, cfg: ProxyConfig,
                   server: bool = False) -> list[FieldError]:
    """References to the snapshot's identity and trust-bundle sections resolve, and a setting
    comes from a section or from files, not both; expected SPIFFE IDs are well formed, on the
    upstream side only, and come with trust anchors to verify the server against."""
    out: list[FieldError] = []
    if tls.expected_spiffe_ids:
        if server:
            out.append(FieldError(f"{p}.expected_spiffe_ids", "upstream (cluster) TLS only: a "
                                  "listener learns the client's identity, authorization "
                                  "decides on it"))
        elif not (tls.trust_bundle or tls.ca_file):
            out.append(FieldError(f"{p}.expected_spiffe_ids", "needs a trust_bundle or ca_file "
                                  "to verify the server's certificate against"))
        for k, sid in enumerate(tls.expected_spiffe_ids):
            if not is_svid_id(sid):  # the rule a server's certificate is read with
                out.append(FieldError(f"{p}.expected_spiffe_ids[{k}]", "must be a SPIFFE ID "
                                      f"(spiffe://<trust-domain>/<path>), got {sid[:80]!r}"))
    if tls.identity:
        if not any(i.name == tls.identity for i in cfg.identities):
            out.append(FieldError(f"{p}.identity", f"no identity named {tls.identity!r}"))
        if tls.cert_file or tls.key_file:
            out.append(FieldError(f"{p}.identity", "not together with cert_file / key_file"))
    if tls.trust_bundle:
        if not any(b.name == tls.trust_bundle for b in cfg.trust_bundles):
            out.append(FieldError(f"{p}.trust_bundle",
                                  f"no trust bundle named {tls.trust_bundle!r}"))
        if tls.ca_file:
            out.append(FieldError(f"{p}.trust_bundle", "not together with ca_file"))
    return out


def key_material_errors(cfg: ProxyConfig) -> list[FieldError]:
    """The shape of the key material (never quoted back: it may be a private key)."""
    out: list[FieldError] = []
    for i, ident in enumerate(cfg.identities):
        p = f"identities[{i}]"
        if "-----BEGIN CERTIFICATE-----" not in ident.cert_chain_pem:
            out.append(FieldError(f"{p}.cert_chain_pem", "must hold a PEM certificate"))
        if _KEY_BLOCK.search(ident.cert_chain_pem):
            out.append(FieldError(f"{p}.cert_chain_pem", f"{_NOT_PUBLIC}: put the key in "
                                  "private_key_pem"))
        if not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", ident.private_key_pem):
            out.append(FieldError(f"{p}.private_key_pem", "must hold a PEM private key"))
        if "ENCRYPTED" in ident.private_key_pem:
            out.append(FieldError(f"{p}.private_key_pem", "must not be encrypted"))
    for i, b in enumerate(cfg.trust_bundles):
        if not b.ca_pems:
            out.append(FieldError(f"trust_bundles[{i}].ca_pems", "at least one CA is required"))
        for j, pem in enumerate(b.ca_pems):
            if "-----BEGIN CERTIFICATE-----" not in pem:
                out.append(FieldError(f"trust_bundles[{i}].ca_pems[{j}]",
                                      "must hold a PEM certificate"))
            if _KEY_BLOCK.search(pem):
                out.append(FieldError(f"trust_bundles[{i}].ca_pems[{j}]", _NOT_PUBLIC))
    return out


_KEY_BLOCK = re.compile(r"PRIVATE KEY-----")
"""A PEM block holding a private key (any algorithm, OpenSSH's too), pasted into a field whose
content is public: certificates and CAs are shown in full by /config_dump (ADR 0021)."""
_NOT_PUBLIC = "must not hold a private key (it would be shown as public material)"
