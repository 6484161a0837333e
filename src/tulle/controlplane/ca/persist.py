"""Where the CA lives: the operator's files, or one record in the control plane's store.

Why the store: replicas on one PostgreSQL store must sign with the same CA, and the first to
start makes it (a create race is settled by the store: the loser reads the winner's).  The
record's kind is internal (`INTERNAL_KINDS`): it is not in the API registry, so the REST API
cannot list, get, apply or delete it, and the compiler ignores it.  Whoever can read the
database can read the key, as with any CA whose key is at rest; the SQLite file is made 0600.

Operator files (`--ca-cert`, `--ca-key`): the key file must not be readable by group or others
(0600), the certificate file holds the CA certificate first and ends with its root.  They are
used as given and never written to the store.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from tulle.controlplane.ca.authority import CAError, CertificateAuthority
from tulle.controlplane.store.errors import AlreadyExistsError, NotFoundError
from tulle.controlplane.store.protocol import Obj, ResourceStore

log = logging.getLogger("tulle.controlplane.ca")

CA_KIND = "InternalCertificateAuthority"
CA_NAME = "mesh-ca"
INTERNAL_GROUP = "internal.tulle.dev/v1"


def check_key_file(path: Path) -> None:
    """A key file readable only by its owner, or CAError saying what to do."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise CAError(f"--ca-key {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CAError(f"--ca-key {path}: mode {stat.S_IMODE(mode):04o} lets others read it; "
                      f"chmod 600 it")


def load_files(cert_path: Path, key_path: Path) -> CertificateAuthority:
    """The operator's CA, or CAError naming the option and file at fault and why."""
    check_key_file(key_path)
    chain, key = _read("--ca-cert", cert_path), _read("--ca-key", key_path)
    where = f"--ca-cert {cert_path} / --ca-key {key_path}"
    ca = CertificateAuthority.from_pem(chain, key, where=where)
    why = ca.not_yet_valid()
    if why:
        raise CAError(f"{where}: {why}; every peer would refuse what it signs until then")
    return ca


def _read(option: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CAError(f"{option} {path}: {exc.strerror}") from None


async def load_or_create(store: ResourceStore, trust_domain: str) -> CertificateAuthority:
    """The store's CA, made (and stored) if there is none yet."""
    for _ in range(3):
        try:
            obj = await store.get(CA_KIND, None, CA_NAME)
        except NotFoundError:
            pass
        else:
            spec = obj.get("spec") or {}
            return CertificateAuthority.from_pem(str(spec.get("certChainPem", "")).encode(),
                                                 str(spec.get("keyPem", "")).encode(),
                                                 where="the stored CA")
        ca = CertificateAuthority.generate(trust_domain)
        record: Obj = {"apiVersion": INTERNAL_GROUP, "kind": CA_KIND,
                       "metadata": {"name": CA_NAME},
                       "spec": {"certChainPem": ca.chain_pem(), "keyPem": ca.key_pem()}}
        try:
            await store.create(record)
        except AlreadyExistsError:
            continue  # another replica made it first: use theirs
        log.info("created the mesh CA (%s, P-256) for trust domain %s",
                 ca.cert.subject.rfc4514_string(), trust_domain)
        return ca
    raise CAError("could not create or read the stored CA")


def restrict_sqlite_file(store_url: str) -> None:
    """The SQLite store holds the CA key: owner-only, like a key file."""
    if not store_url.startswith("sqlite:"):
        return
    from tulle.controlplane.store.factory import sqlite_path

    path = sqlite_path(store_url)
    if path in ("", ":memory:"):
        return
    for p in (path, f"{path}-wal", f"{path}-shm"):
        if os.path.exists(p):
            os.chmod(p, 0o600)
