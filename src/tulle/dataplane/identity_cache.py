"""The workload identities on disk (`--cache-dir`, ADR 0123): what lets a proxy restarted while
its control plane is away serve mTLS again.

DESIGN.md decision 4 keeps "last good config and certificates in force (and on disk)".  The
cached snapshot alone could not be served in a mesh with mTLS: it names the workload's
certificate, whose key was memory only (ADR 0108).  Now every certificate the proxy holds (its
own and, on a node agent, each further workload's) is written with its key and the mesh trust
bundle, one file per workload, at every issue, renewal and trust-bundle change, and read back
at start.

The key is the workload's credential until the certificate expires (it proves the workload to
its peers and, with the certificate, to the control plane), so the rules are strict:

- the files live in `<cache-dir>/identity/`, a directory the proxy makes 0700; a file is 0600
  from its first byte and written whole (temporary file, fsync, rename, fsync of the
  directory): a crash leaves the previous file or the new one, never half of one;
- before a read or a write, the directory (and before a read, the file) must be the proxy
  uid's, with no bit for group or others, and not a symbolic link: anything else is refused
  with the reason (`IdentityRefused`), never read, never written into;
- a file is served only when its certificate is valid now, certifies the key kept with it,
  chains to the trust bundle kept with it, names the workload (CN) in its namespace (SPIFFE
  ID `/ns/<namespace>/`), and is the SPIFFE ID the cached snapshot gives that workload, when
  it gives one;
- the key is never in a log line or an error (`Identity`, `WorkloadKey` and `_Stored` redact
  it in `repr`; the reasons name fields, never their content);
- each proxy keeps an index of the workloads whose identities it may write here
  (`<namespace>.<name>.index`, its own workload's name, written whole like an identity), so
  a later start knows which files are its own to remove once it no longer fronts their
  workloads (ADR 0126); a file is removed (`remove`) only when reading it would pass the
  same checks and it is that workload's identity in this format: a link, another uid's file
  or anything else the proxy did not write stays, and is said.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import stat
from collections.abc import Collection
from pathlib import Path
from typing import Annotated

import msgspec
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tulle.dataplane.identity import HeldIdentity, WorkloadKey
from tulle.proxyconfig.reserved import workload_identity
from tulle.proxyconfig.stream import Certificate
from tulle.x509chain import chains_to_root

IDENTITY_DIR = "identity"
"""The subdirectory of `--cache-dir` that holds the identities."""
DIR_MODE = 0o700
FILE_MODE = 0o600
MAX_BYTES = 1 << 20
"""A file larger than this is refused unread (a chain and a bundle are a few KiB)."""
FORMAT = "tulle-identity/1"
INDEX_FORMAT = "tulle-identity-index/1"
MAX_INDEX = 4096
"""Workloads an index may list (a node proves about 20 in one hello, ADR 0032)."""
MAX_OTHER_INDEXES = 64
"""Other proxies' indexes a start reads before removing anything (`claims`): a directory
shared by more proxies than that is not told apart, and nothing in it is removed."""
MAX_CHAIN = 4
"""CA certificates a chain may climb through before it must reach a root of the bundle."""


class IdentityRefused(Exception):
    """A cached identity (or its directory) that must not be read or written; the message
    says why, never what the file holds.  `exposed`: others could reach it (its mode, owner
    or a link): refused loudly, never read."""

    def __init__(self, reason: str, *, exposed: bool = False, path: str = "") -> None:
        super().__init__(reason)
        self.exposed = exposed
        self.path = path


class _Index(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: str
    proxy: str
    """`namespace/name` of the proxy's own workload (whose index this is)."""
    workloads: Annotated[list[str], msgspec.Meta(max_length=MAX_INDEX)]
    """`namespace/name` of each workload whose identity it may keep here."""


class _Stored(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: str
    workload: str
    """`namespace/name`."""
    certificate: str
    """The chain, leaf first (PEM), as the control plane sent it."""
    key: str
    """The leaf's private key (PKCS#8 PEM)."""
    trust_bundle: list[str]
    issued_at: int = 0
    """Unix seconds it was issued at (`Certificate.not_before`: the renewal schedule)."""

    def __repr__(self) -> str:
        return f"_Stored({self.workload}, key=<redacted>)"


def index_name(namespace: str, name: str) -> str:
    """`<namespace>.<name>.index`: proxy `namespace/name`'s index (an identity file ends in
    `.json`, a temporary one starts with a dot: no workload's file has this name)."""
    return file_name(namespace, name).removesuffix(".json") + ".index"


def file_name(namespace: str, name: str) -> str:
    """`<namespace>.<name>.json`; ValueError for a name that is not one path component."""
    base = f"{namespace}.{name}.json"
    if "/" in base or "\0" in base or namespace.startswith("."):
        raise ValueError(f"workload {namespace}/{name}: not a file name")
    return base


class IdentityCache:
    """One directory of cached identities (`<cache-dir>/identity`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __repr__(self) -> str:
        return f"IdentityCache({self.directory})"

    def path_of(self, namespace: str, name: str) -> Path:
        return self.directory / file_name(namespace, name)

    def save(self, namespace: str, name: str, held: HeldIdentity) -> None:
        """Write `held` for workload `namespace/name`, atomically, 0600; OSError, or
        IdentityRefused for a directory that is not the proxy's alone."""
        target = file_name(namespace, name)
        doc = _Stored(format=FORMAT, workload=f"{namespace}/{name}",
                      certificate=held.cert.cert_chain, key=held.key.pem(),
                      trust_bundle=list(held.cert.trust_bundle),
                      issued_at=held.cert.not_before)
        self._write_whole(target, msgspec.json.encode(doc))

    def record(self, namespace: str, name: str, workloads: Collection[str]) -> None:
        """Write the index of proxy `namespace/name` (its own workload, as its cached
        snapshot is named): the workloads whose identities it may keep here (ADR 0126).
        What a later start finds listed and no longer fronts is its to remove; another
        proxy's file in a shared `--cache-dir` never is.  OSError or IdentityRefused."""
        doc = _Index(format=INDEX_FORMAT, proxy=f"{namespace}/{name}",
                     workloads=sorted(set(workloads)))
        self._write_whole(index_name(namespace, name), msgspec.json.encode(doc))

    def recorded(self, namespace: str, name: str) -> list[str]:
        """The workloads the index of proxy `namespace/name` lists ([] without one), read
        with the checks of an identity; IdentityRefused for one that may not be taken."""
        target = index_name(namespace, name)
        try:
            dfd = self._open_dir(create=False)
        except FileNotFoundError:
            return []
        try:
            got = self._read(dfd, target)
        finally:
            os.close(dfd)
        if got is None:
            return []
        where = str(self.directory / target)
        try:
            doc = msgspec.json.decode(got[0], type=_Index)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise IdentityRefused(f"not an index of kept identities ({exc})", path=where) from None
        if doc.format != INDEX_FORMAT or doc.proxy != f"{namespace}/{name}":
            raise IdentityRefused(f"not the index of {namespace}/{name} ({INDEX_FORMAT})",
                                  path=where)
        return doc.workloads

    def claims(self, namespace: str, name: str, wanted: Collection[str]) -> dict[str, str]:
        """Of `wanted`, the workloads another proxy's index in this directory lists, each with
        that proxy: a `--cache-dir` shared by proxies (a node agent and the sidecar a pod
        moved to, `tulle demo --loopback`'s sidecars) whose files proxy `namespace/name` must
        not remove, since that proxy fronted them at its last start and may have written them
        since (ADR 0129).  An index that may not be read, or that is not the index its name
        says, claims nothing.  IdentityRefused for a directory holding more than
        `MAX_OTHER_INDEXES` other indexes (nothing can be told then), or one that is not the
        proxy's alone; OSError."""
        want = set(wanted)
        claimed: dict[str, str] = {}
        if not want:
            return claimed
        ours = index_name(namespace, name)
        try:
            dfd = self._open_dir(create=False)
        except FileNotFoundError:
            return claimed
        try:
            others = sorted(n for n in os.listdir(dfd)
                            if n.endswith(".index") and not n.startswith(".") and n != ours)
            if len(others) > MAX_OTHER_INDEXES:
                raise IdentityRefused(f"{len(others)} other proxies' indexes, more than the "
                                      f"{MAX_OTHER_INDEXES} a start reads")
            for other in others:
                try:
                    got = self._read(dfd, other)
                    doc = msgspec.json.decode(got[0], type=_Index) if got else None
                except (IdentityRefused, OSError, msgspec.DecodeError,
                        msgspec.ValidationError):
                    continue
                if doc is None or doc.format != INDEX_FORMAT:
                    continue
                ns, _, nm = doc.proxy.partition("/")
                try:
                    if index_name(ns, nm) != other:
                        continue
                except ValueError:
                    continue
                for k in want.intersection(doc.workloads):
                    claimed.setdefault(k, doc.proxy)
        finally:
            os.close(dfd)
        return claimed

    def _write_whole(self, target: str, data: bytes) -> None:
        """`data` as `target`, 0600 from its first byte, whole or not at all: a temporary
        file (a leftover is unlinked, never written into), fsync, rename, fsync of the
        directory, which must be the proxy uid's alone (made 0700)."""
        dfd = self._open_dir(create=True)
        tmp = f".{target}.tmp"  # (no workload's file starts with a dot)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)  # a leftover of a crash: never written into
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, FILE_MODE, dir_fd=dfd)
            try:
                try:
                    os.fchmod(fd, FILE_MODE)  # the umask may have taken bits away
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, target, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise
            os.fsync(dfd)  # the rename itself survives a crash
        finally:
            os.close(dfd)

    def load(self, namespace: str, name: str, *, first: bool = True,
             expected: Collection[str] = (), now: float | None = None) -> HeldIdentity | None:
        """The identity cached for `namespace/name`, None when there is none, or
        IdentityRefused saying why it must not be served.  `first`: the proxy's own workload
        (its identity section is `workload`), else a node's further one.  `expected`: the
        SPIFFE IDs the cached snapshot gives the workload (empty: it gives none)."""
        target = file_name(namespace, name)
        try:
            dfd = self._open_dir(create=False)
        except FileNotFoundError:
            return None
        try:
            got = self._read(dfd, target)
        finally:
            os.close(dfd)
        if got is None:
            return None
        try:
            return usable(got[0], namespace, name, first=first, expected=expected, now=now)
        except IdentityRefused as exc:
            exc.path = str(self.directory / target)
            raise

    def remove(self, namespace: str, name: str) -> int:
        """Delete the identity kept for `namespace/name` (and a leftover temporary file of
        it): how many names the file had (1: its key is off the disk's names; more: hard
        links elsewhere still hold it, which the caller says, ADR 0129), 0 when there is
        none.  What reading refuses is
        never deleted either (IdentityRefused: a symbolic link, not a regular file, another
        uid's, group or other bits), nor a file that is not an identity of this workload in
        this format: only what the proxy itself wrote goes (ADR 0126).  The unlink is by
        name in a directory checked to be the proxy uid's alone (0700), after checking the
        name still leads to the file read: only that uid or root could swap it between."""
        target = file_name(namespace, name)
        try:
            dfd = self._open_dir(create=False)
        except FileNotFoundError:
            return 0
        try:
            _drop_leftover(f".{target}.tmp", dfd)
            got = self._read(dfd, target)
            if got is None:
                return 0
            data, st = got
            try:
                doc = msgspec.json.decode(data, type=_Stored)
            except (msgspec.DecodeError, msgspec.ValidationError):
                doc = None
            where = str(self.directory / target)
            if doc is None or doc.format != FORMAT or doc.workload != f"{namespace}/{name}":
                raise IdentityRefused(f"it is not an identity of {namespace}/{name} the proxy "
                                      f"wrote ({FORMAT})", path=where)
            try:
                now = os.stat(target, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                return 0
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                raise IdentityRefused("it was replaced while it was checked", path=where)
            os.unlink(target, dir_fd=dfd)
            os.fsync(dfd)  # the removal itself survives a crash
            return max(1, st.st_nlink)
        finally:
            os.close(dfd)

    def _read(self, dfd: int, target: str) -> tuple[bytes, os.stat_result] | None:
        """The bytes of `target` in the directory `dfd` and its status, once it is checked to
        be a regular file of the proxy uid's alone, not a symbolic link, at most `MAX_BYTES`;
        None when there is none, IdentityRefused otherwise (never read then)."""
        where = str(self.directory / target)
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=dfd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise IdentityRefused("it is a symbolic link", exposed=True,
                                      path=where) from None
            raise
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            try:
                if not stat.S_ISREG(st.st_mode):
                    raise IdentityRefused("it is not a regular file", exposed=True)
                _owned_alone(st)
                if st.st_size > MAX_BYTES:
                    raise IdentityRefused(f"{st.st_size} bytes, more than the {MAX_BYTES} an "
                                          f"identity can be")
            except IdentityRefused as exc:
                exc.path = where
                raise
            return f.read(MAX_BYTES + 1), st

    def _open_dir(self, *, create: bool) -> int:
        """A descriptor of the directory, once it is checked to be the proxy's alone (made
        0700 first when `create` and it is missing); FileNotFoundError when it is missing."""
        made = False
        if create:
            self.directory.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            try:
                os.mkdir(self.directory, DIR_MODE)
                made = True
            except FileExistsError:
                pass
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                         | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise IdentityRefused(f"directory {self.directory}: not a directory (a "
                                      f"symbolic link?)", exposed=True) from None
            raise
        try:
            if made:
                os.fchmod(fd, DIR_MODE)  # the umask may have taken bits away
            _owned_alone(os.fstat(fd), f"directory {self.directory}: ", DIR_MODE)
        except BaseException:
            os.close(fd)
            raise
        return fd


def _drop_leftover(tmp: str, dfd: int) -> None:
    """Unlink `tmp`, a temporary file `save` left behind (a crash mid-write: it may hold a
    key), when it is a regular file of the proxy uid's alone; anything else stays."""
    try:
        st = os.stat(tmp, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            _owned_alone(st)
            os.unlink(tmp, dir_fd=dfd)
    except (OSError, IdentityRefused):
        pass


def _owned_alone(st: os.stat_result, what: str = "", want: int = FILE_MODE) -> None:
    uid = os.geteuid()
    if st.st_uid != uid:
        raise IdentityRefused(f"{what}owned by uid {st.st_uid}, not by the proxy's ({uid}); "
                              "remove it", exposed=True)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise IdentityRefused(f"{what}mode {mode:04o} lets group or others in (it must be "
                              f"{want:04o}, the proxy uid's alone); remove it", exposed=True)


def usable(data: bytes, namespace: str, name: str, *, first: bool = True,
           expected: Collection[str] = (), now: float | None = None) -> HeldIdentity:
    """The identity in `data`, if it may be served for workload `namespace/name` now (module
    docstring); IdentityRefused otherwise."""
    try:
        doc = msgspec.json.decode(data, type=_Stored)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise IdentityRefused(f"not an identity file ({exc})") from None
    if doc.format != FORMAT:
        raise IdentityRefused(f"format {doc.format[:60]!r}, not {FORMAT!r}")
    if doc.workload != f"{namespace}/{name}":
        raise IdentityRefused(f"it is workload {doc.workload[:300]!r}'s, not "
                              f"{namespace}/{name}'s")
    key = _key(doc.key)
    try:
        chain = x509.load_pem_x509_certificates(doc.certificate.encode())
        roots = [c for pem in doc.trust_bundle
                 for c in x509.load_pem_x509_certificates(pem.encode())]
    except ValueError:
        raise IdentityRefused("its certificate or trust bundle is not PEM X.509") from None
    leaf = chain[0]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(serialization.Encoding.DER, spki) != \
            key.public_key().public_bytes(serialization.Encoding.DER, spki):
        raise IdentityRefused("its key is not the certificate's")
    at = dt.datetime.now(dt.UTC) if now is None else dt.datetime.fromtimestamp(now, dt.UTC)
    if at >= leaf.not_valid_after_utc:
        raise IdentityRefused(f"the certificate expired at {_iso(leaf.not_valid_after_utc)}")
    if at < leaf.not_valid_before_utc:
        raise IdentityRefused(f"the certificate is not valid before "
                              f"{_iso(leaf.not_valid_before_utc)} (a clock set back?)")
    uri = _spiffe(leaf)
    cns = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1 or cns[0].value != name:
        raise IdentityRefused(f"the certificate is not workload {name}'s")
    if uri.split("/")[3:5] != ["ns", namespace]:  # spiffe://<td>/ns/<namespace>/sa/<sa>
        raise IdentityRefused(f"the certificate's SPIFFE ID {uri[:300]} is not in namespace "
                              f"{namespace}")
    if expected and uri not in expected:
        raise IdentityRefused(f"the certificate's SPIFFE ID {uri[:300]} is not the one the "
                              f"cached snapshot gives the workload "
                              f"({', '.join(sorted(expected))})")
    if not roots:
        raise IdentityRefused("no trust bundle kept with it")
    _chains(chain, roots, at)
    issued = max(int(leaf.not_valid_before_utc.timestamp()),
                 min(doc.issued_at, int(leaf.not_valid_after_utc.timestamp()) - 1))
    cert = Certificate(cert_chain=doc.certificate, trust_bundle=list(doc.trust_bundle),
                       not_after=int(leaf.not_valid_after_utc.timestamp()), not_before=issued)
    return HeldIdentity(WorkloadKey.from_private(key), cert,
                        workload_identity(namespace, name, first=first))


def _key(pem: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise IdentityRefused("its key is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve,
                                                                         ec.SECP256R1):
        raise IdentityRefused("its key is not ECDSA P-256")
    return key


def _spiffe(leaf: x509.Certificate) -> str:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise IdentityRefused("the certificate carries no SPIFFE ID") from None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or not uris[0].startswith("spiffe://"):
        raise IdentityRefused("the certificate does not carry exactly one SPIFFE ID")
    return str(uris[0])


def _chains(chain: list[x509.Certificate], roots: list[x509.Certificate],
            at: dt.datetime) -> None:
    """IdentityRefused unless the chain leads from its leaf, through CA certificates valid
    `at`, to a root of the bundle valid `at` (by signature: what every peer's handshake
    checks; a tampered certificate fails here)."""
    if not chains_to_root(chain, roots, at, max_intermediates=MAX_CHAIN, roots_valid=True):
        raise IdentityRefused("the certificate does not chain to a valid root of the trust "
                              "bundle kept with it")


def _iso(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


__all__ = ["DIR_MODE", "FILE_MODE", "IDENTITY_DIR", "INDEX_FORMAT", "MAX_BYTES", "MAX_INDEX",
           "MAX_OTHER_INDEXES", "IdentityCache", "IdentityRefused", "file_name", "index_name", "usable"]
