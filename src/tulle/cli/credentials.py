"""Which API token `tulle` sends, so that the local quickstart needs no copying of tokens.

The first of these that gives a token wins:

1. `--token` or `TULLE_TOKEN`;
2. the file named by `TULLE_TOKEN_FILE`;
3. `$XDG_CONFIG_HOME/tulle/token` (default `~/.config/tulle/token`);
4. only when the server is on loopback: the local control plane's admin token file,
   `TULLE_ADMIN_TOKEN_FILE` or the default next to its SQLite store (`TULLE_STORE`, default
   `sqlite:tulle.db` -> `tulle.db.admin-token`), the file `tulle control-plane run` writes;
   then the runtime admin token file (`$XDG_RUNTIME_DIR/tulle/admin-token`, for root
   without it `/run/tulle/admin-token`), where `tulle demo` puts its control plane's token so
   that `tulle` in another shell works with no flags or variables.

Step 4 is limited to loopback so that a `TULLE_SERVER` pointing elsewhere never receives the
local admin token.  A token file readable by group or others is still used, with a warning.
Stdlib only: `tulle` starts fast.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import sys
import urllib.parse
from pathlib import Path

DEFAULT_STORE = "sqlite:tulle.db"
ADMIN_TOKEN_SUFFIX = ".admin-token"
"""As `tulle.controlplane.api.admin_token` names the file (a test keeps the two in step)."""

_TOKEN_RE = re.compile(r"^tulle_([0-9a-f]{16})_[A-Za-z0-9_-]{43}$")
"""The shape `tulle.controlplane.api.api_tokens` mints (a test keeps the two in step)."""

_explicit: list[str] = []


def token_id(token: str) -> str | None:
    """The non-secret id of a whole token; None if `token` is not one."""
    m = _TOKEN_RE.match(token.strip())
    return m.group(1) if m else None


def set_explicit(token: str | None) -> None:
    """What `--token`/`TULLE_TOKEN` gave for this invocation (None: nothing)."""
    _explicit.clear()
    if token:
        _explicit.append(token)


def user_token_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tulle" / "token"


def local_admin_token_file() -> Path | None:
    named = os.environ.get("TULLE_ADMIN_TOKEN_FILE")
    if named:
        return Path(named)
    store = os.environ.get("TULLE_STORE") or DEFAULT_STORE
    if store.startswith("sqlite:") and store[len("sqlite:"):] not in ("", ":memory:"):
        return Path(store[len("sqlite:"):] + ADMIN_TOKEN_SUFFIX)
    return None


def runtime_admin_token_file() -> Path | None:
    """Where a local control plane that keeps no SQLite file of its own (`tulle demo`)
    publishes its admin token: `$XDG_RUNTIME_DIR/tulle/admin-token`, for root without that
    variable `/run/tulle/admin-token`; None for anyone else (no shared /tmp path to squat)."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base:
        return Path(base) / "tulle" / "admin-token"
    if os.geteuid() == 0:
        return Path("/run/tulle/admin-token")
    return None


def is_loopback_url(server: str) -> bool:
    host = urllib.parse.urlsplit(server).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve(server: str) -> str | None:
    """The token to send to `server`, or None."""
    if _explicit:
        return _explicit[0]
    env = os.environ.get("TULLE_TOKEN")
    if env:
        return env.strip()
    candidates: list[tuple[Path, bool]] = []
    named = os.environ.get("TULLE_TOKEN_FILE")
    if named:
        candidates.append((Path(named), False))
    candidates.append((user_token_file(), False))
    if is_loopback_url(server):
        named_admin = bool(os.environ.get("TULLE_ADMIN_TOKEN_FILE"))
        local = local_admin_token_file()
        if local is not None:
            candidates.append((local, not named_admin))
        runtime = runtime_admin_token_file()
        if runtime is not None:
            candidates.append((runtime, True))
    for path, own_only in candidates:
        token = _read(path, own_only=own_only)
        if token:
            return token
    return None


def _read(path: Path, *, own_only: bool = False) -> str | None:
    """The token in `path`.  `own_only` (the local admin token files, found by their place,
    not named by the user): only a regular file owned by this user, opened without following
    a symbolic link -- another user could plant one in a shared directory, or race one in,
    and have `tulle` act with a token of their choosing (attack review A2, ADR 0060)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | (os.O_NOFOLLOW | os.O_NONBLOCK if own_only else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if own_only and (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid()):
            print(f"warning: not using {path}: not a file of this user's", file=sys.stderr)
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            text = f.read(4096).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)
    if text and stat.S_IMODE(st.st_mode) & 0o077:
        print(f"warning: token file {path} is readable by others (chmod 600 it)",
              file=sys.stderr)
    return text or None
