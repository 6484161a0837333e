"""Removing, at start, the kept identities of workloads the proxy no longer fronts
(`KeptIdentities.tidy`, ADR 0126): only those its own index (or its cached snapshot) lists,
one line each, never its own workload's, a bounded number per start, and never a file the
proxy did not write."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tulle.controlplane.ca.admission import certificate_message
from tulle.controlplane.ca.authority import CertificateAuthority
from tulle.controlplane.ca.spiffe import SpiffeId
from tulle.dataplane.identity import HeldIdentity, WorkloadKey
from tulle.dataplane.identity_cache import MAX_OTHER_INDEXES, IdentityCache
from tulle.dataplane.kept_identities import MAX_REMOVALS, KeptIdentities


@pytest.fixture(scope="module")
def one() -> HeldIdentity:
    """One certificate for every file: only the file name and `workload` differ."""
    ca = CertificateAuthority.generate("cluster.local")
    key = WorkloadKey()
    return HeldIdentity(key, certificate_message(ca, ca.sign_csr(
        key.csr("ns", "a"), SpiffeId("cluster.local", "ns", "a"), "a")))


def _files(cache: IdentityCache) -> list[str]:
    return sorted(p.name for p in cache.directory.iterdir() if p.suffix == ".json")


def test_what_this_proxy_kept_and_no_longer_fronts_goes_and_nothing_else(
        tmp_path: Path, one: HeldIdentity, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tulle.agent")
    cache = IdentityCache(tmp_path / "identity")
    for n in ("a", "b", "c", "old", "web-0"):
        cache.save("ns", n, one)
    kept = KeptIdentities(cache, "ns/a")
    kept.tidy(["ns/a", "ns/b", "ns/c"])  # (no index yet: nothing was this proxy's before)
    assert cache.recorded("ns", "a") == ["ns/a", "ns/b", "ns/c"]
    assert len(_files(cache)) == 5 and not caplog.records
    # Restarted fronting a alone; its cached snapshot also named `old` (a cache from before
    # the index).  web-0 is another proxy's (a shared --cache-dir): in no list of this one's.
    KeptIdentities(cache, "ns/a").tidy(["ns/a"], named={"ns/a", "ns/old"})
    assert _files(cache) == ["ns.a.json", "ns.web-0.json"]
    assert cache.recorded("ns", "a") == ["ns/a"]
    lines = sorted(r.getMessage() for r in caplog.records)
    assert [x.split(" at ")[0] for x in lines] == [
        f"removed the kept certificate and key of ns/{n}" for n in ("b", "c", "old")]
    assert all(x.endswith(": this proxy no longer fronts it") for x in lines)
    assert "PRIVATE KEY" not in caplog.text


def test_removals_are_bounded_per_start_and_the_rest_stay_listed(
        tmp_path: Path, one: HeldIdentity) -> None:
    cache = IdentityCache(tmp_path / "identity")
    gone = [f"ns/p{i:03d}" for i in range(MAX_REMOVALS + 8)]
    for k in gone:
        cache.save("ns", k.split("/")[1], one)
    cache.record("ns", "a", ["ns/a", *gone])
    KeptIdentities(cache, "ns/a").tidy(["ns/a"])
    assert len(_files(cache)) == 8  # the rest: at the next start
    assert cache.recorded("ns", "a") == ["ns/a", *gone[MAX_REMOVALS:]]
    KeptIdentities(cache, "ns/a").tidy(["ns/a"])
    assert _files(cache) == [] and cache.recorded("ns", "a") == ["ns/a"]


def test_a_file_the_proxy_did_not_write_is_said_left_and_not_tried_again(
        tmp_path: Path, one: HeldIdentity, caplog: pytest.LogCaptureFixture) -> None:
    cache = IdentityCache(tmp_path / "identity")
    cache.save("ns", "a", one)
    decoy = tmp_path / "decoy.json"
    decoy.write_text(cache.path_of("ns", "a").read_text())
    cache.path_of("ns", "b").symlink_to(decoy)
    cache.record("ns", "a", ["ns/a", "ns/b"])
    KeptIdentities(cache, "ns/a").tidy(["ns/a"])
    assert cache.path_of("ns", "b").is_symlink() and decoy.exists()
    [line] = [r for r in caplog.records if "ns/b" in r.getMessage()]
    assert line.levelno == logging.ERROR and "it is a symbolic link" in line.getMessage()
    assert cache.recorded("ns", "a") == ["ns/a"]  # never this proxy's to remove


def test_an_index_others_could_have_written_is_ignored_loudly(
        tmp_path: Path, one: HeldIdentity, caplog: pytest.LogCaptureFixture) -> None:
    cache = IdentityCache(tmp_path / "identity")
    cache.save("ns", "b", one)
    cache.record("ns", "a", ["ns/a", "ns/b"])
    (cache.directory / "ns.a.index").chmod(0o644)
    KeptIdentities(cache, "ns/a").tidy(["ns/a"])
    assert cache.path_of("ns", "b").exists()  # not taken from a list it cannot trust
    assert any(r.levelno == logging.ERROR and "ignoring the index of kept identities" in
               r.getMessage() and "mode 0644" in r.getMessage() for r in caplog.records)
    assert cache.recorded("ns", "a") == ["ns/a"]  # replaced by a file of its own


def test_without_a_cache_directory_nothing_happens() -> None:
    KeptIdentities(None, "ns/a").tidy(["ns/a"], named={"ns/b"})


def test_a_name_that_is_no_files_is_passed_over(tmp_path: Path, one: HeldIdentity) -> None:
    """A cached snapshot tags whatever its control plane wrote: a tag that is not one path
    component names no file this proxy could have kept, and does not stop the start."""
    cache = IdentityCache(tmp_path / "identity")
    cache.save("ns", "b", one)
    KeptIdentities(cache, "ns/a").tidy(["ns/a"], named={"ns/../b", "ns/b"})
    assert _files(cache) == [] and cache.recorded("ns", "a") == ["ns/a"]


def test_a_key_another_proxy_sharing_the_directory_fronts_now_stays(
        tmp_path: Path, one: HeldIdentity, caplog: pytest.LogCaptureFixture) -> None:
    """A node agent fronted pod b; b then got a sidecar of its own, with the same
    `--cache-dir`, which lists b in its index and writes b's key.  The node agent restarted
    without b must not remove that key: it is the sidecar's now (ADR 0129; before, the agent
    removed it and the sidecar's next start without its control plane had no key)."""
    caplog.set_level(logging.INFO, logger="tulle.agent")
    cache = IdentityCache(tmp_path / "identity")
    KeptIdentities(cache, "ns/node").tidy(["ns/node", "ns/b"])
    cache.save("ns", "node", one)
    cache.save("ns", "b", one)
    KeptIdentities(cache, "ns/b").tidy(["ns/b"])  # b's own sidecar starts
    cache.save("ns", "b", one)
    KeptIdentities(cache, "ns/node").tidy(["ns/node"], named={"ns/b"})
    assert _files(cache) == ["ns.b.json", "ns.node.json"]
    assert cache.recorded("ns", "node") == ["ns/node"]  # b is the sidecar's to remove now
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("not removing the kept certificate of ns/b at ") and line.endswith(
        "(this proxy no longer fronts it): the index of proxy ns/b, which shares the "
        "directory, lists it")


def test_an_index_that_may_not_be_read_or_is_not_its_names_claims_nothing(
        tmp_path: Path, one: HeldIdentity) -> None:
    cache = IdentityCache(tmp_path / "identity")
    for n in ("b", "c", "d"):
        cache.save("ns", n, one)
    cache.record("ns", "a", ["ns/a", "ns/b", "ns/c", "ns/d"])
    cache.record("ns", "x", ["ns/b"])
    (cache.directory / "ns.x.index").chmod(0o644)  # others could have written it
    cache.record("ns", "y", ["ns/c"])
    (cache.directory / "ns.y.index").rename(cache.directory / "ns.z.index")  # not z's
    (cache.directory / "ns.w.index").write_text("{not json")
    (cache.directory / "ns.w.index").chmod(0o600)
    KeptIdentities(cache, "ns/a").tidy(["ns/a"])
    assert _files(cache) == []


def test_a_directory_shared_by_more_proxies_than_a_start_reads_removes_nothing(
        tmp_path: Path, one: HeldIdentity, caplog: pytest.LogCaptureFixture) -> None:
    cache = IdentityCache(tmp_path / "identity")
    cache.save("ns", "b", one)
    cache.record("ns", "a", ["ns/a", "ns/b"])
    for i in range(MAX_OTHER_INDEXES + 1):
        cache.record("ns", f"s{i}", [f"ns/s{i}"])
    KeptIdentities(cache, "ns/a").tidy(["ns/a"])
    assert _files(cache) == ["ns.b.json"]
    assert cache.recorded("ns", "a") == ["ns/a", "ns/b"]  # tried again at the next start
    assert any("cannot tell whether another proxy sharing the directory does" in r.getMessage()
               for r in caplog.records)


def test_a_hard_linked_key_is_removed_and_the_names_still_holding_it_are_said(
        tmp_path: Path, one: HeldIdentity, caplog: pytest.LogCaptureFixture) -> None:
    """A hard link (a backup made with `cp -al`, say) passes every check of a kept file; the
    proxy's own name goes, but the key is still on the disk under the other: said at WARNING
    rather than 'removed' alone (before: one INFO line that the key was removed)."""
    caplog.set_level(logging.INFO, logger="tulle.agent")
    cache = IdentityCache(tmp_path / "identity")
    cache.save("ns", "b", one)
    cache.record("ns", "a", ["ns/a", "ns/b"])
    backup = tmp_path / "backup.json"
    backup.hardlink_to(cache.path_of("ns", "b"))
    KeptIdentities(cache, "ns/a").tidy(["ns/a"])
    assert _files(cache) == [] and backup.exists()
    [line] = caplog.records
    assert line.levelno == logging.WARNING and line.getMessage().endswith(
        ": this proxy no longer fronts it; the file had 1 other hard link, under which its "
        "key is still on the disk: remove it")
