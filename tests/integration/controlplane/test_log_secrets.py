"""`tulle control-plane run --log-level debug` writes no secret to its log (audit: aiosqlite's
debug lines printed the SQL parameters, the stored CA's `keyPem` among them).

A real control-plane process on a fresh SQLite store (its first start makes the CA and writes
it to the store), at debug level; a real proxy is admitted with a bootstrap token and gets its
certificate, API calls with a bogus token and with a bootstrap token as a bearer are refused.
Then its whole output (stdout and stderr) holds no private key, no API token and no bootstrap
token, and no line of a database driver."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from tests.support.controlplane import (
    auth,
    control_plane_process,
    eventually,
    issue_token,
    subscribe,
)

from tulle.proxyconfig.stream import WorkloadInfo

DRIVERS = ("aiosqlite", "asyncpg")
"""The loggers of the stores' database drivers (`store/factory.py`)."""


async def test_debug_level_logs_no_key_and_no_token(tmp_path: Path) -> None:
    async with control_plane_process(f"sqlite:{tmp_path}/tulle.db", tmp_path,
                                     "--log-level", "debug") as cp:
        web = WorkloadInfo(name="web", namespace="shop")
        bootstrap = await issue_token(cp.api, web)
        proxy = await subscribe([cp.stream_port], web)
        try:
            await eventually(proxy.agent.connected.is_set, timeout=15)
            async with aiohttp.ClientSession() as s:
                for bearer in ("tulle_0000000000000000_bogus", bootstrap):
                    async with s.get(f"{cp.api}/api/v1/proxies",
                                     headers={"Authorization": f"Bearer {bearer}"}) as r:
                        assert r.status == 401
                async with s.get(f"{cp.api}/api/v1/proxies", headers=auth(cp.api)) as r:
                    assert r.status == 200
                    assert '"name":"web"' in await r.text()
        finally:
            await proxy.stop()
        # A connection that says nothing is logged at debug level only: the level took.
        _, writer = await asyncio.open_connection("127.0.0.1", cp.stream_port)
        writer.close()
        await eventually(lambda: "closed before its hello" in cp.log(), timeout=10)
        admin = cp.admin_token
    log = cp.log()
    assert "created the mesh CA" in log  # this start made the CA and stored it
    assert "PRIVATE KEY" not in log
    assert "keyPem" not in log
    assert admin and admin not in log and admin.rsplit("_", 1)[-1] not in log
    assert bootstrap not in log and bootstrap.rsplit(".", 1)[-1] not in log
    assert "bogus" not in log
    for driver in DRIVERS:
        assert f" {driver}[" not in log, f"{driver} logged:\n{log[:2000]}"
