"""A real, private redis-server for tests, from Debian's `redis-server` package.

    async with redis_server() as r: ...   # r.port, r.address ("127.0.0.1:<port>"), r.stop()

Each server listens on a free 127.0.0.1 port with its own temp dir (no persistence: `save ""`,
`appendonly no`), is started as a child process and is stopped (SIGTERM, then SIGKILL) and its
dir removed at the end, also when the test fails.  `stop()` ends it mid-test (the
"Redis went away" scenarios), `start()` brings it back on the same port.
`scripts/install-system-deps.sh test` installs the binary; without it the tests that need one
are skipped, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from tests.support.proxy import free_port

BINARY = shutil.which("redis-server") or "/usr/bin/redis-server"
START_TIMEOUT = 10.0


@dataclass
class RedisServer:
    port: int
    root: str = ""
    proc: asyncio.subprocess.Process | None = field(default=None, repr=False)
    extra: tuple[str, ...] = ()
    """More redis-server arguments (`--requirepass`, `--user`, `--tls-port` ...)."""

    async def start(self) -> None:
        """Start (or restart, after `stop()`) the server on its port; back when it answers."""
        self.proc = await asyncio.create_subprocess_exec(
            BINARY, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.root,
            "--save", "", "--appendonly", "no", "--protected-mode", "yes",
            "--logfile", f"{self.root}/redis.log", "--daemonize", "no", *self.extra,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            try:
                if (await self.command(b"PING")).startswith((b"+PONG", b"-NOAUTH")):
                    return  # (NOAUTH: up, with a password)
            except OSError:
                pass
            if loop.time() > deadline or self.proc.returncode is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            await asyncio.sleep(0.02)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def command(self, *args: bytes) -> bytes:
        """One command over a fresh connection; the raw reply's first line."""
        from tulle.dataplane.ratelimit.redis import encode
        r, w = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            w.write(encode(*args))
            return await asyncio.wait_for(r.readline(), 5)
        finally:
            w.close()


def available() -> bool:
    return shutil.which("redis-server") is not None


@contextlib.asynccontextmanager
async def redis_server(*extra: str) -> AsyncIterator[RedisServer]:
    """`extra`: more redis-server arguments; `{root}` in one is the server's own directory
    (for TLS files written there before the start: see `tls_files`)."""
    if not available():
        pytest.skip("redis-server is not installed (scripts/install-system-deps.sh test)")
    root = tempfile.mkdtemp(prefix="tulle-redistest-")
    server = RedisServer(free_port(), root, extra=tuple(a.format(root=root) for a in extra))
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
        shutil.rmtree(root, ignore_errors=True)
