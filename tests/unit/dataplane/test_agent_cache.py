"""The cached snapshot (`--cache-dir`) is the proxy uid's alone (ADR 0111): written under the
default umask it was 0644, so the application's uid read what it holds -- the mesh as the
workload sees it, and any `identities` with their keys a snapshot carries (here one does; a
control plane's never does: the proxy injects its certificate after, ADR 0108)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tulle.dataplane.agent import save_cached
from tulle.proxyconfig.model import Identity, ProxyConfig

KEY = "-----BEGIN PRIVATE KEY-----\nnot-really-a-key\n-----END PRIVATE KEY-----\n"


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)  # the usual default: files 0644, directories 0755
    try:
        yield
    finally:
        os.umask(old)


def config() -> ProxyConfig:
    return ProxyConfig(identities=[Identity(name="web", cert_chain_pem="CERT",
                                            private_key_pem=KEY)])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_cached_snapshot_and_its_directory_are_the_proxys_alone(
        tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "cache" / "shop.web.json"
    save_cached(path, config())
    assert KEY.strip().splitlines()[1] in path.read_text()  # the key is in there, hence:
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700


def test_an_older_world_readable_cache_and_a_leftover_temporary_file_do_not_keep_their_mode(
        tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "shop.web.json"
    path.write_text("{}")
    path.chmod(0o644)  # written by an earlier version
    leftover = path.with_suffix(".tmp")
    leftover.write_text("half")
    leftover.chmod(0o666)  # a crash mid-write
    save_cached(path, config())
    assert mode(path) == 0o600
    assert not leftover.exists()


def test_a_restrictive_umask_does_not_make_the_file_unreadable_to_the_proxy(
        tmp_path: Path) -> None:
    old = os.umask(0o277)
    try:
        save_cached(tmp_path / "c.json", config())
    finally:
        os.umask(old)
    assert mode(tmp_path / "c.json") == 0o600
