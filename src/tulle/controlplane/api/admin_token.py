"""The first admin token: how anyone gets into an API that refuses everyone without a token.

At start the control plane makes sure its admin token file (`--admin-token-file`, by default
next to a SQLite store: `tulle.db` -> `tulle.db.admin-token`) holds a token the store accepts
as admin.  If the file holds one, nothing changes; if it is missing, unreadable or holds a token
the store does not know (a fresh memory store, a revoked token), a new admin token is minted
and the file replaced atomically, created 0600 in a directory it creates 0700.  The token is
never logged: the log line names the file and the token's id.

Whoever can read that file is admin; whoever can write the store's file already was.  So the
file is as sensitive as the store and lives next to it.  On PostgreSQL each replica keeps its
own file (each a valid admin token), since replicas need not share a disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from pathlib import Path

from tulle.controlplane.api.api_tokens import Role, TokenStore

log = logging.getLogger("tulle.controlplane")

ADMIN_TOKEN_SUFFIX = ".admin-token"


def default_admin_token_file(store_url: str) -> Path | None:
    """Next to a SQLite store; None for other stores (memory, PostgreSQL): then the option
    `--admin-token-file` says where, or no file is written."""
    if store_url.startswith("sqlite:"):
        path = store_url[len("sqlite:"):]
        if path and path != ":memory:":
            return Path(path + ADMIN_TOKEN_SUFFIX)
    return None


async def ensure_admin_token(tokens: TokenStore, path: Path | None) -> str:
    """An admin token valid in `tokens`, kept in `path` (when given) with mode 0600."""
    if path is not None:
        current, loose = _read(path)
        if current is not None:
            principal = await tokens.verify(current)
            if principal is not None and principal.role is Role.ADMIN:
                if loose:
                    _tighten(path)
                    log.warning("admin token file %s was readable by others; now 0600", path)
                return current
    token, info = await tokens.create(Role.ADMIN, "bootstrap-admin")
    if path is not None:
        write_secret(path, token + "\n")
        log.info("admin token %s written to %s (mode 0600)", info.id, path)
    return token


def _read(path: Path) -> tuple[str | None, bool]:
    """The token in `path` and whether others may read the file.  Only a regular file of
    this user's counts, opened without following a link: a link (or another user's file) in
    its place is replaced by a new token rather than read, or chmod-ed through to its target
    (attack review A2, ADR 0060)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None, False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            log.warning("admin token file %s is not a file of this user's; replacing it", path)
            return None, False
        with os.fdopen(fd, "rb", closefd=False) as f:
            text = f.read(4096).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None, False
    finally:
        os.close(fd)
    return text or None, bool(stat.S_IMODE(st.st_mode) & 0o077)


def _tighten(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def write_secret(path: Path, text: str) -> None:
    """Write `text` to `path` atomically; the file is 0600 from its first byte."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
