"""A real, throwaway PostgreSQL server for tests, from Debian's `postgresql` binaries.

    def test_x(postgres_server): ...            # session-scoped: one server per test run
    async with fresh_schema(postgres_server) as dsn: ...   # a new schema, dropped after

The server lives in a temp dir `/tmp/tulle-pgtest-*` (data, Unix socket, log): `initdb` with
trust auth, then `pg_ctl start` on a free 127.0.0.1 port with fsync off (test data only).
initdb refuses to run as root, so as root everything runs as the `postgres` user (`runuser`).
At the end: `pg_ctl stop -m immediate` and `rm -rf`.  A run that crashed leaves its dir behind;
the next run stops and removes every such dir whose owning pytest process is gone.

The binaries come from `/usr/lib/postgresql/<ver>/bin` (or $TULLE_PG_BINDIR);
`scripts/install-system-deps.sh test` installs them.  Without them the tests that need a
server are skipped, saying so.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.support.proxy import free_port

PREFIX = "tulle-pgtest-"
TMP = os.environ.get("TULLE_PG_TMPDIR", "/tmp")
START_TIMEOUT = 30


@dataclass(frozen=True, slots=True)
class PostgresServer:
    port: int
    root: Path

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"


def find_bindir() -> Path | None:
    """The newest Debian PostgreSQL bin dir with initdb, or $TULLE_PG_BINDIR."""
    if env := os.environ.get("TULLE_PG_BINDIR"):
        return Path(env) if (Path(env) / "initdb").exists() else None
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        return None
    newest = max(found, key=lambda p: int(Path(p).parent.parent.name.split(".")[0]))
    return Path(newest).parent


def _as_server_user() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _run(cmd: list[str], cwd: Path) -> None:
    done = subprocess.run(
        [*_as_server_user(), *cmd], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")


def _stop(bindir: Path, root: Path) -> None:
    data = root / "data"
    if (data / "postmaster.pid").exists():
        subprocess.run(
            [*_as_server_user(), str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
             "stop"],
            cwd=root, capture_output=True, timeout=30, check=False,
        )
    shutil.rmtree(root, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(bindir: Path) -> None:
    """Stop and remove servers left by test runs that died without cleaning up."""
    for path in glob.glob(os.path.join(TMP, PREFIX + "*")):
        root = Path(path)
        try:
            owner = int((root / "owner").read_text())
        except (OSError, ValueError):
            owner = 0
        if owner and _pid_alive(owner):
            continue
        _stop(bindir, root)


@contextlib.contextmanager
def running_postgres(bindir: Path) -> Iterator[PostgresServer]:
    cleanup_stale(bindir)
    root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=TMP))
    try:
        (root / "owner").write_text(str(os.getpid()))
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            os.chown(root, pg.pw_uid, pg.pw_gid)
        _run([str(bindir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "-A", "trust",
              "-E", "UTF8", "--locale=C", "--no-sync"], cwd=root)
        port = 0
        for attempt in range(3):  # the free port may be taken between the probe and the bind
            port = free_port()
            options = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
                       " -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            try:
                _run([str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"),
                      "-w", "-t", str(START_TIMEOUT), "-o", options, "start"], cwd=root)
                break
            except RuntimeError:
                if attempt == 2:
                    log = (root / "log").read_text() if (root / "log").exists() else ""
                    raise RuntimeError(f"PostgreSQL did not start; its log:\n{log}") from None
        yield PostgresServer(port, root)
    finally:
        _stop(bindir, root)


_shared: list[PostgresServer] = []
_users = 0
_stack = contextlib.ExitStack()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server on loopback for the whole test session.

    Test modules import this fixture, which gives each module its own fixture definition;
    the server itself is shared (reference-counted) so a session starts exactly one.
    """
    global _users
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries not found under /usr/lib/postgresql/*/bin "
                    "(install them: scripts/install-system-deps.sh test, as root)")
    if not _shared:
        _shared.append(_stack.enter_context(running_postgres(bindir)))
    _users += 1
    try:
        yield _shared[0]
    finally:
        _users -= 1
        if _users == 0:
            _shared.clear()
            _stack.close()


@contextlib.asynccontextmanager
async def fresh_database(server: PostgresServer) -> AsyncIterator[str]:
    """A new empty database on `server` (its DSN), dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(server.dsn())
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield server.dsn(name)
        finally:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def fresh_schema(server: PostgresServer) -> AsyncIterator[str]:
    """A DSN whose connections use a new, empty schema (`?search_path=`), dropped afterwards.

    Much cheaper than a database per test (~5 ms vs ~250 ms).  NOTIFY channels are per
    database, so stores in sibling schemas wake each other's watchers: harmless extra reads.
    """
    name = f"s_{uuid.uuid4().hex[:16]}"
    conn = await asyncpg.connect(server.dsn())
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
        try:
            yield f"{server.dsn()}?search_path={name}"
        finally:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()
