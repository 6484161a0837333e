"""The rotation's stages as pure transitions (ADR 0035): who signs, which roots are trusted,
whose certificates are admitted, when a stage is done, and the store record round trip."""

from __future__ import annotations

import datetime as dt

import pytest

from tulle.controlplane.ca.authority import CAError, CertificateAuthority, verify_workload
from tulle.controlplane.ca.rotation import (
    ADD_ROOT,
    IDLE,
    REISSUE,
    RETIRE,
    CAState,
    ProxyView,
    RotationError,
    fingerprint,
    from_spec,
    progress,
    to_spec,
)
from tulle.controlplane.ca.spiffe import SpiffeId
from tulle.controlplane.ca.tokens import PURPOSE
from tulle.dataplane.identity import WorkloadKey
from tulle.proxyconfig.stream import bundle_id

NOW = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
ID = SpiffeId("cluster.local", "shop", "web")


def _leaf(ca: CertificateAuthority) -> str:
    return ca.sign_csr(WorkloadKey().csr("shop", "web"), ID, "web").chain_pem


def test_three_stages_then_idle() -> None:
    old, new = CertificateAuthority.generate("cluster.local"), CertificateAuthority.generate(
        "cluster.local")
    s0 = CAState.single(old)
    s1 = s0.start(new, NOW)
    assert (s1.stage, s1.signing, s1.next) == (ADD_ROOT, old, new)
    assert s1.roots == (old.root, new.root)
    assert s1.token_secret == old.derive_secret(PURPOSE)  # pinned: tokens outlive the key
    s2 = s1.advance()
    assert (s2.stage, s2.signing, s2.next) == (REISSUE, new, None)
    assert s2.roots == (old.root, new.root) and s2.previous == (old.cert,)
    s3 = s2.advance()
    assert (s3.stage, s3.roots) == (RETIRE, (new.root,))
    s4 = s3.advance()
    assert (s4.stage, s4.previous, s4.started_at) == (IDLE, (), 0)
    assert s4.token_secret == s1.token_secret
    with pytest.raises(RotationError, match="no rotation in progress"):
        s4.advance()
    with pytest.raises(RotationError, match="already at stage add-root"):
        s1.start(CertificateAuthority.generate("cluster.local"), NOW)
    with pytest.raises(RotationError, match="is the CA in use"):
        s0.start(old, NOW)
    # The bundle id changes with the roots, and both ends compute the same one.
    assert len({s0.bundle_id(), s1.bundle_id(), s3.bundle_id()}) == 3
    assert s1.bundle_id() == bundle_id(s1.bundle()) == s2.bundle_id()


def test_the_old_ca_signs_the_streams_certificate_through_reissue_and_then_goes() -> None:
    """A proxy off its stream through `add-root` trusts the old root only: the stream stays
    verifiable to it until `retire`, and the old key is kept no longer than that."""
    old, new = CertificateAuthority.generate("cluster.local"), CertificateAuthority.generate(
        "cluster.local")
    s1 = CAState.single(old).start(new, NOW)
    s2, s3 = s1.advance(), s1.advance().advance()
    assert [s.stream_ca() for s in (CAState.single(old), s1, s2, s3, s3.advance())] == [
        old, old, old, new, new]
    assert (s2.signing, s2.previous_ca, s3.previous_ca) == (new, old, None)
    back = from_spec(to_spec(s2))  # a restart mid-reissue: the stream's CA survives
    assert back.previous_ca is not None
    assert fingerprint(back.stream_ca().cert) == fingerprint(old.cert)
    assert back.stream_ca().key_pem() == old.key_pem()
    assert "previousKeyPem" not in str(to_spec(s3))  # retired: the old key is not kept


def test_old_certificates_are_admitted_while_reissuing_only() -> None:
    old, new = CertificateAuthority.generate("cluster.local"), CertificateAuthority.generate(
        "cluster.local")
    old_leaf, new_leaf = _leaf(old), _leaf(new)
    s1 = CAState.single(old).start(new, NOW)
    s2 = s1.advance()
    s3 = s2.advance()
    assert verify_workload(old_leaf, s1.issuers())[0] == ID
    with pytest.raises(ValueError, match="not issued by this mesh's CA"):
        verify_workload(new_leaf, s1.issuers())  # the new CA does not sign yet
    assert verify_workload(old_leaf, s2.issuers())[0] == ID
    assert verify_workload(new_leaf, s2.issuers())[0] == ID
    with pytest.raises(ValueError, match="not issued by this mesh's CA"):
        verify_workload(old_leaf, s3.issuers())
    assert verify_workload(new_leaf, s3.issuers())[0] == ID


def test_two_roots_of_the_same_trust_domain_have_different_names() -> None:
    a, b = CertificateAuthority.generate("cluster.local"), CertificateAuthority.generate(
        "cluster.local")
    assert a.root.subject != b.root.subject
    # Leaves name their issuer's key, so a verifier holding both roots picks the right one.
    from cryptography import x509

    leaf = x509.load_pem_x509_certificate(_leaf(a).encode())
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = a.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


def test_progress_names_who_has_not_moved() -> None:
    old, new = CertificateAuthority.generate("cluster.local"), CertificateAuthority.generate(
        "cluster.local")
    s1 = CAState.single(old).start(new, NOW)
    s2 = s1.advance()
    old_fp, new_fp = fingerprint(old.cert), fingerprint(new.cert)
    views = [ProxyView("shop/a", True, s1.bundle_id(), old_fp),
             ProxyView("shop/b", True, CAState.single(old).bundle_id(), old_fp),
             ProxyView("shop/c", False, "", old_fp)]
    p1 = progress(s1, views)
    assert not p1.done
    assert list(p1.pending) == ["shop/b", "shop/c"]
    assert "has not applied trust bundle" in p1.pending["shop/b"]
    assert "does not take trust updates" in p1.pending["shop/c"]
    assert progress(s1, views[:1]).done
    # reissue: the bundle is the same; the certificate must be the new CA's.
    p2 = progress(s2, [ProxyView("shop/a", True, s2.bundle_id(), old_fp),
                       ProxyView("shop/d", True, s2.bundle_id(), new_fp)])
    assert list(p2.pending) == ["shop/a"] and "old CA" in p2.pending["shop/a"]
    assert progress(s2, []).done  # no proxy connected: nothing to wait for
    assert not progress(CAState.single(old), []).done  # idle is never "done"


def test_the_store_record_round_trips_every_stage() -> None:
    old, new = CertificateAuthority.generate("cluster.local"), CertificateAuthority.generate(
        "cluster.local")
    s1 = CAState.single(old).start(new, NOW)
    s2 = s1.advance()
    s3 = s2.advance()
    for s in (CAState.single(old), s1, s2, s3, s3.advance()):
        back = from_spec(to_spec(s))
        assert (back.stage, back.started_at) == (s.stage, s.started_at)
        assert fingerprint(back.signing.cert) == fingerprint(s.signing.cert)
        assert back.bundle() == s.bundle()
        assert [fingerprint(c) for c in back.previous] == [fingerprint(c) for c in s.previous]
        assert (back.next and fingerprint(back.next.cert)) == (s.next and fingerprint(
            s.next.cert))
        assert back.token_secret == s.token_secret
    # A record made before rotation existed (certChainPem + keyPem only) reads as idle.
    legacy = from_spec({"certChainPem": old.chain_pem(), "keyPem": old.key_pem()})
    assert (legacy.stage, legacy.roots, legacy.token_secret) == (IDLE, (old.root,), None)
    bad = to_spec(CAState.single(old).start(new, NOW))
    bad["rotation"] = {"stage": "sideways"}
    with pytest.raises(CAError, match="rotation.stage 'sideways'"):
        from_spec(bad)
