"""Attack review A1 (issue 9): requests shaped to slip past a DENY AuthorizationPolicy, sent
as raw bytes to a real proxy's inbound listener (the setup of test_authorization.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.integration.controlplane.test_authorization import _status, mesh, policy
from tests.support.controlplane import eventually


async def status_of(port: int, head: bytes) -> bytes:
    """The status code the proxy answers a request head sent as is."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(head)
        return (await asyncio.wait_for(r.readline(), 5)).split(b" ")[1]
    finally:
        w.close()


def get(target: bytes, fields: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: api\r\n" + fields + \
        b"Connection: close\r\n\r\n"


async def test_a_deny_cannot_be_dodged_by_header_or_path_shapes(tmp_path: Path) -> None:
    async with mesh(tmp_path) as m:
        await m.enforce(policy("no-admin", {"action": "DENY", "rules": [
            {"to": [{"paths": ["/admin", "/admin/*"]}]},
            {"to": [{"headers": [{"name": "x-debug", "values": ["true"]}]}]}]}))
        await eventually(lambda: _status(m, "/admin"), timeout=10)
        for fields in (b"x-debug: true\r\n", b"X-Debug: true\r\n", b"x-debug:true \r\n",
                       b"x-debug: true\t\r\n", b"x-debug: true\r\nx-debug: true\r\n",
                       b"x-debug: no\r\nx-debug: true\r\n", b"x-debug: no, true\r\n"):
            assert await status_of(m.http, get(b"/p", fields)) == b"403", fields
        for target in (b"/admin", b"http://api/admin", b"/admin;x", b"/admin/;x/y",
                       b"/admin%2Fx", b"/admin%2f", b"/p/..;/admin", b"/admin\\x"):
            assert await status_of(m.http, get(target)) in (b"403", b"400"), target
        for target, fields in ((b"/p", b"x-debug: false\r\n"), (b"/p;x", b""),
                               (b"/p%2Fadmin", b""), (b"/administrator", b"")):
            assert await status_of(m.http, get(target, fields)) == b"200", (target, fields)
