"""The identities on disk (`identity_cache.py`, ADR 0123): written 0600 in a 0700 directory,
whole or not at all, whatever the umask; read back only when the file is the proxy uid's
alone and what it holds may be served for the workload now.  Every refusal says why without
a byte of the key."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from tulle.controlplane.ca.admission import certificate_message
from tulle.controlplane.ca.authority import CertificateAuthority
from tulle.controlplane.ca.spiffe import SpiffeId
from tulle.dataplane.identity import HeldIdentity, WorkloadKey
from tulle.dataplane.identity_cache import (
    MAX_BYTES,
    MAX_INDEX,
    IdentityCache,
    IdentityRefused,
    index_name,
)
from tulle.proxyconfig.stream import hello_proof_payload

WEB = "spiffe://cluster.local/ns/shop/sa/web"


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.generate("cluster.local")


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def held(ca: CertificateAuthority, *, ns: str = "shop", name: str = "web-0", sa: str = "web",
         ttl: dt.timedelta = dt.timedelta(hours=24), now: dt.datetime | None = None,
         ) -> HeldIdentity:
    key = WorkloadKey()
    signed = ca.sign_csr(key.csr(ns, name), SpiffeId("cluster.local", ns, sa), name, ttl=ttl,
                         now=now)
    return HeldIdentity(key, certificate_message(ca, signed))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def refusal(cache: IdentityCache, **kw: object) -> IdentityRefused:
    with pytest.raises(IdentityRefused) as info:
        cache.load("shop", "web-0", **kw)  # type: ignore[arg-type]
    return info.value


def test_an_identity_kept_is_the_same_one_back(tmp_path: Path, ca: CertificateAuthority,
                                               umask_022: None) -> None:
    cache = IdentityCache(tmp_path / "cache" / "identity")
    h = held(ca)
    cache.save("shop", "web-0", h)
    path = cache.path_of("shop", "web-0")
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert mode(path.parent.parent) == 0o700  # (a cache directory it made, too)
    back = cache.load("shop", "web-0", expected={WEB})
    assert back is not None
    assert back.cert.cert_chain == h.cert.cert_chain
    assert back.cert.trust_bundle == h.cert.trust_bundle
    assert back.cert.not_after == h.cert.not_after and back.cert.not_before == h.cert.not_before
    assert back.identity.name == "workload" and back.identity.private_key_pem == h.key.pem()
    # The key works: a hello's proof made with it verifies with the certificate's key.
    assert back.key.certified_by(h.cert.cert_chain)
    leaf = x509.load_pem_x509_certificates(h.cert.cert_chain.encode())[0]
    pub = leaf.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(base64.b64decode(back.key.proof("shop", "web-0", 1)),
               hello_proof_payload("shop", "web-0", 1), ec.ECDSA(hashes.SHA256()))
    node = cache.load("shop", "web-0", first=False)
    assert node is not None and node.identity.name == "workload:shop/web-0"
    assert "PRIVATE KEY" not in repr(back) + repr(back.key) + repr(back.identity)
    assert cache.load("shop", "api-0") is None  # none kept: nothing, no refusal
    assert IdentityCache(tmp_path / "none").load("shop", "web-0") is None


def test_a_restrictive_umask_leaves_the_proxy_able_to_read_what_it_wrote(
        tmp_path: Path, ca: CertificateAuthority) -> None:
    old = os.umask(0o277)
    try:
        cache = IdentityCache(tmp_path / "identity")
        cache.save("shop", "web-0", held(ca))
    finally:
        os.umask(old)
    assert mode(cache.directory) == 0o700
    assert mode(cache.path_of("shop", "web-0")) == 0o600
    assert cache.load("shop", "web-0") is not None


def test_a_write_replaces_a_file_whole_and_never_writes_into_a_leftover(
        tmp_path: Path, ca: CertificateAuthority, umask_022: None) -> None:
    cache = IdentityCache(tmp_path / "identity")
    cache.save("shop", "web-0", held(ca))
    path = cache.path_of("shop", "web-0")
    path.chmod(0o644)  # exposed (by hand, or an old copy)
    leftover = cache.directory / ".shop.web-0.json.tmp"
    leftover.write_text("half")
    leftover.chmod(0o666)
    inode = path.stat().st_ino
    second = held(ca)  # a renewal: a new key
    cache.save("shop", "web-0", second)
    assert path.stat().st_ino != inode and mode(path) == 0o600
    assert not leftover.exists()
    assert sorted(p.name for p in cache.directory.iterdir()) == ["shop.web-0.json"]
    back = cache.load("shop", "web-0")
    assert back is not None and back.cert.cert_chain == second.cert.cert_chain


@pytest.mark.parametrize("how", ["group-readable file", "symlinked file", "open directory",
                                 "symlinked directory"])
def test_what_others_could_reach_is_refused_and_never_read(
        tmp_path: Path, ca: CertificateAuthority, how: str) -> None:
    real = IdentityCache(tmp_path / "real")
    real.save("shop", "web-0", held(ca))
    cache = real
    if how == "group-readable file":
        real.path_of("shop", "web-0").chmod(0o640)
        want = "mode 0640 lets group or others in"
    elif how == "symlinked file":
        cache = IdentityCache(tmp_path / "links")
        cache.save("shop", "api-0", held(ca, name="api-0"))  # (makes the directory)
        cache.path_of("shop", "web-0").symlink_to(real.path_of("shop", "web-0"))
        want = "it is a symbolic link"
    elif how == "open directory":
        real.directory.chmod(0o755)
        want = "mode 0755 lets group or others in"
    else:
        (tmp_path / "link").symlink_to(real.directory)
        cache = IdentityCache(tmp_path / "link")
        want = "not a directory (a symbolic link?)"
    exc = refusal(cache)
    assert want in str(exc) and exc.exposed
    if how == "open directory":  # and nothing is written into it either
        with pytest.raises(IdentityRefused):
            real.save("shop", "web-0", held(ca))


@pytest.mark.skipif(os.geteuid() != 0, reason="only root makes a file another uid owns")
def test_a_file_another_uid_owns_is_refused(tmp_path: Path, ca: CertificateAuthority) -> None:
    cache = IdentityCache(tmp_path / "identity")
    cache.save("shop", "web-0", held(ca))
    os.chown(cache.path_of("shop", "web-0"), 65534, 65534)
    exc = refusal(cache)
    assert "owned by uid 65534" in str(exc) and exc.exposed


def _rewrite(cache: IdentityCache, **fields: object) -> None:
    path = cache.path_of("shop", "web-0")
    doc = json.loads(path.read_text())
    doc.update(fields)
    path.write_text(json.dumps(doc))


def test_an_identity_that_may_not_be_served_now_is_refused_with_the_reason(
        tmp_path: Path, ca: CertificateAuthority) -> None:
    cache = IdentityCache(tmp_path / "identity")
    h = held(ca)
    key_line = h.key.pem().splitlines()[1]

    def refused(**kw: object) -> str:
        text = str(refusal(cache, **kw))
        assert key_line not in text and "PRIVATE KEY" not in text
        return text

    cache.save("shop", "web-0", h)
    now = dt.datetime.now(dt.UTC).timestamp()
    assert "expired at" in refused(now=h.cert.not_after + 1)
    assert "not valid before" in refused(now=h.cert.not_before - 3600)
    assert "is not the one the cached snapshot gives the workload" in refused(
        expected={"spiffe://cluster.local/ns/shop/sa/other"})
    assert cache.load("shop", "web-0", now=now, expected={WEB, "spiffe://x/ns/shop/sa/w"})

    # Another workload's certificate and key under this name (a foreign identity).
    cache.save("shop", "web-0", held(ca, name="api-0"))
    assert "the certificate is not workload web-0's" in refused()
    cache.save("shop", "web-0", held(ca, ns="other"))
    assert "is not in namespace shop" in refused()
    # Another mesh's: its chain does not lead to the bundle kept with it.
    other = CertificateAuthority.generate("cluster.local")
    cache.save("shop", "web-0", h)
    _rewrite(cache, trust_bundle=other.trust_bundle())
    assert "does not chain to a valid root of the trust bundle" in refused()
    # Tampered with: another key, another workload's name in the file, garbage, too big.
    cache.save("shop", "web-0", h)
    _rewrite(cache, key=WorkloadKey().pem())
    assert "its key is not the certificate's" in refused()
    cache.save("shop", "web-0", h)
    _rewrite(cache, workload="shop/api-0")
    assert "it is workload 'shop/api-0''s, not shop/web-0's" in refused()
    cache.save("shop", "web-0", h)
    _rewrite(cache, key="-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert "its key is not an unencrypted PEM private key" in refused()
    cache.path_of("shop", "web-0").write_text("{not json")
    assert "not an identity file" in refused()
    cache.path_of("shop", "web-0").write_bytes(b" " * (MAX_BYTES + 1))
    assert f"more than the {MAX_BYTES}" in refused()
    cache.save("shop", "web-0", h)
    _rewrite(cache, format="tulle-identity/9")
    assert "format 'tulle-identity/9'" in refused()


def test_a_name_that_is_not_one_path_component_is_refused(tmp_path: Path,
                                                          ca: CertificateAuthority) -> None:
    cache = IdentityCache(tmp_path / "identity")
    with pytest.raises(ValueError, match="not a file name"):
        cache.save("shop", "../web-0", held(ca))
    assert not (tmp_path / "web-0.json").exists()


def test_a_removal_deletes_the_proxys_own_file_and_its_leftover(
        tmp_path: Path, ca: CertificateAuthority) -> None:
    """ADR 0126: a workload that left the proxy leaves no key behind."""
    cache = IdentityCache(tmp_path / "identity")
    cache.save("shop", "web-0", held(ca))
    cache.save("shop", "api-0", held(ca, name="api-0"))
    leftover = cache.directory / ".shop.web-0.json.tmp"  # a crash mid-write: may hold a key
    leftover.write_text("half")
    leftover.chmod(0o600)
    assert cache.remove("shop", "web-0")
    assert sorted(p.name for p in cache.directory.iterdir()) == ["shop.api-0.json"]
    assert not cache.remove("shop", "web-0")  # gone already: nothing, no refusal
    assert IdentityCache(tmp_path / "none").remove("shop", "web-0") == 0
    assert cache.load("shop", "api-0") is not None  # the other one is untouched
    # An expired one goes too: what is removed need not be servable, only the proxy's.
    cache.save("shop", "old-0", held(ca, name="old-0", ttl=dt.timedelta(seconds=1),
                                     now=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)))
    assert cache.remove("shop", "old-0")


@pytest.mark.parametrize("how", ["symlink", "group-readable file", "another workload's file",
                                 "not an identity", "fifo", "symlinked directory"])
def test_a_removal_never_deletes_what_the_proxy_did_not_write(
        tmp_path: Path, ca: CertificateAuthority, how: str) -> None:
    cache = IdentityCache(tmp_path / "identity")
    cache.save("shop", "api-0", held(ca, name="api-0"))  # (makes the directory)
    path = cache.path_of("shop", "web-0")
    decoy = tmp_path / "decoy.json"
    decoy.write_text(cache.path_of("shop", "api-0").read_text())
    decoy.chmod(0o600)
    exposed = True
    if how == "symlink":
        path.symlink_to(decoy)
        want = "it is a symbolic link"
    elif how == "group-readable file":
        cache.save("shop", "web-0", held(ca))
        path.chmod(0o640)
        want = "mode 0640 lets group or others in"
    elif how == "another workload's file":
        path.write_text(decoy.read_text())
        path.chmod(0o600)
        want, exposed = "it is not an identity of shop/web-0 the proxy wrote", False
    elif how == "not an identity":
        path.write_text("{}")
        path.chmod(0o600)
        want, exposed = "it is not an identity of shop/web-0 the proxy wrote", False
    elif how == "fifo":
        os.mkfifo(path, 0o600)
        want = "it is not a regular file"
    else:
        (tmp_path / "link").symlink_to(cache.directory)
        cache = IdentityCache(tmp_path / "link")
        path = cache.directory / "shop.api-0.json"
        want = "not a directory (a symbolic link?)"
    with pytest.raises(IdentityRefused) as info:
        cache.remove("shop", "web-0" if how != "symlinked directory" else "api-0")
    assert want in str(info.value) and info.value.exposed == exposed
    assert os.path.lexists(path)  # left where it was, and what a link points at too
    assert decoy.read_text() == (tmp_path / "identity" / "shop.api-0.json").read_text()


def test_a_proxys_index_is_kept_whole_and_read_back_only_when_it_is_its_own(
        tmp_path: Path, umask_022: None) -> None:
    """ADR 0126: which workloads' identities a proxy may keep here, so that a later start
    removes only its own."""
    cache = IdentityCache(tmp_path / "identity")
    assert cache.recorded("shop", "node-a") == []
    cache.record("shop", "node-a", ["shop/pod-b", "shop/node-a", "shop/pod-b"])
    path = cache.directory / index_name("shop", "node-a")
    assert path.name == "shop.node-a.index" and mode(path) == 0o600
    assert cache.recorded("shop", "node-a") == ["shop/node-a", "shop/pod-b"]
    assert cache.load("shop", "node-a") is None  # an index is no identity file
    assert cache.recorded("shop", "node-b") == []  # each proxy its own
    (cache.directory / index_name("shop", "node-b")).write_bytes(path.read_bytes())
    (cache.directory / index_name("shop", "node-b")).chmod(0o600)
    with pytest.raises(IdentityRefused, match="not the index of shop/node-b"):
        cache.recorded("shop", "node-b")
    path.write_text('{"format": "tulle-identity-index/1", "proxy": "shop/node-a", '
                    f'"workloads": {json.dumps(["x"] * (MAX_INDEX + 1))}}}')
    with pytest.raises(IdentityRefused, match="not an index of kept identities"):
        cache.recorded("shop", "node-a")
    path.chmod(0o640)
    with pytest.raises(IdentityRefused, match="mode 0640") as info:
        cache.recorded("shop", "node-a")
    assert info.value.exposed
