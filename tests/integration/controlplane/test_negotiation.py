"""Version negotiation against a real control-plane process: an older proxy (fewer features)
gets snapshots without what it lacks and the status says so; an unsupported stream protocol is
refused with a clear error, logged once."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
from tests.support.controlplane import (
    admin_token,
    apply,
    auth,
    authenticated,
    control_plane_process,
    eventually,
    named_origin,
    open_stream,
    subscribe,
)
from tests.support.proxy import free_port
from tests.support.resources import NS, permissive_mesh, workload

from tulle.proxyconfig.features import SUPPORTED
from tulle.proxyconfig.stream import (
    Ack,
    Certificate,
    Error,
    FrameDecoder,
    Hello,
    Message,
    Snapshot,
    WorkloadInfo,
    encode,
)

TULLE = str(Path(sys.executable).parent / "tulle")
OLDER = [f for f in SUPPORTED if f != "path-normalization"]
"""What a proxy built before path normalisation existed would announce."""


class RawProxy:
    """A test client speaking the stream protocol by hand; records every message it gets."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.decoder = FrameDecoder()
        self.pending: list[Message] = []

    @classmethod
    async def connect(cls, port: int, hello: Hello, api: str = "") -> RawProxy:
        """With `api`: admitted the supported way (a bootstrap token and a CSR); the
        certificate that comes first is skipped."""
        if api:
            hello = await authenticated(api, hello)
        reader, writer = await open_stream(port, hello.token)
        writer.write(encode(hello))
        raw = cls(reader, writer)
        if api:
            first = await raw.next()
            assert isinstance(first, Certificate), first
        return raw

    async def next(self, timeout: float = 5.0) -> Message | None:
        """The next message; None when the control plane closed the stream."""
        async with asyncio.timeout(timeout):
            while not self.pending:
                data = await self.reader.read(65536)
                if not data:
                    return None
                self.pending += self.decoder.feed(data)
        return self.pending.pop(0)

    def close(self) -> None:
        self.writer.close()


async def proxies(api: str) -> dict[str, dict[str, Any]]:
    async with aiohttp.ClientSession(headers=auth(api)) as s, \
            s.get(f"{api}/api/v1/proxies") as r:
        body = await r.json()
    return {p["name"]: p | {"_stream": body["stream"]} for p in body["items"]}


async def tulle(api: str, *args: str) -> str:
    env = {"TULLE_SERVER": api, "PATH": "/usr/bin:/bin", "TULLE_TOKEN": admin_token(api),
           **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"}}
    proc = await asyncio.create_subprocess_exec(
        TULLE, *args, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_an_older_proxy_gets_what_it_understands_and_the_status_says_so(
        tmp_path: Path) -> None:
    async with named_origin("app") as app, control_plane_process("memory", tmp_path) as cp:
        old_port, new_port = free_port(), free_port()
        status, body = await apply(
            cp.api, workload("old-0", old_port, app, free_port()),
            workload("new-0", new_port, app, free_port()),
            workload("raw-0", free_port(), app, free_port()),
            permissive_mesh())  # the test calls old-0's inbound port itself (no sidecar)
        assert status == 200, body

        # The bytes an older proxy receives: no path_normalization anywhere; the rest is there.
        raw = await RawProxy.connect(cp.stream_port, Hello(
            workload=WorkloadInfo(name="raw-0", namespace=NS), features=OLDER), cp.api)
        msg = await raw.next()
        assert isinstance(msg, Snapshot), msg
        assert b'"path_normalization"' not in bytes(msg.config)
        assert b'"overload"' in bytes(msg.config)
        raw.writer.write(encode(Ack(version=msg.version)))

        # Real proxies: one of this build, one announcing what an older build would.
        older = await subscribe([cp.stream_port], WorkloadInfo(name="old-0", namespace=NS,
                                                               address="127.0.0.1"),
                                features=OLDER)
        newer = await subscribe([cp.stream_port], WorkloadInfo(name="new-0", namespace=NS,
                                                               address="127.0.0.1"))
        try:
            async def acked() -> bool:
                ps = await proxies(cp.api)
                return all(ps.get(n, {}).get("ackedVersion") for n in ("old-0", "new-0", "raw-0"))

            await eventually(acked, timeout=10)
            ps = await proxies(cp.api)
            assert ps["old-0"]["protocol"] == 2 and ps["old-0"]["features"] == OLDER
            assert ps["old-0"]["withheld"] == [{"feature": "path-normalization",
                                                "paths": ["settings.path_normalization"]}]
            assert ps["raw-0"]["withheld"] == ps["old-0"]["withheld"]
            assert ps["new-0"]["features"] == list(SUPPORTED) and ps["new-0"]["withheld"] == []
            assert ps["old-0"]["lastNack"] is None
            # The older proxy runs its config: the inbound listener reaches the app.
            assert older.server.config is not None
            async with aiohttp.ClientSession() as s, s.get(
                    f"http://127.0.0.1:{old_port}/hello") as r:
                assert r.status == 200 and (await r.json())["name"] == "app"

            table = await tulle(cp.api, "get", "proxies")
            lines = {ln.split()[1]: ln for ln in table.splitlines()[1:]}
            assert "WITHHELD" in table.splitlines()[0]
            assert "path-normalization" in lines["old-0"]
            assert "path-normalization" not in lines["new-0"]
            described = await tulle(cp.api, "describe", "workload", "old-0", "-n", NS)
            assert "protocol 2" in described
            assert "Withheld:     path-normalization (settings.path_normalization)" in described
        finally:
            raw.close()
            await older.stop()
            await newer.stop()


async def test_an_unsupported_protocol_is_refused_with_the_reason_and_logged_once(
        tmp_path: Path) -> None:
    async with control_plane_process("memory", tmp_path) as cp:
        for _ in range(3):  # a proxy retrying must not flood the log
            raw = await RawProxy.connect(cp.stream_port, Hello(
                workload=WorkloadInfo(name="future-0", namespace=NS), protocol=99))
            try:
                msg = await raw.next()
                assert isinstance(msg, Error), msg
                assert msg.reason == ("unsupported stream protocol version 99: this control "
                                      "plane speaks 2 (current 2)")
                assert await raw.next() is None  # and the stream is closed
            finally:
                raw.close()
        # A contract version it does not compile is refused the same way.
        raw = await RawProxy.connect(cp.stream_port, Hello(
            workload=WorkloadInfo(name="future-1", namespace=NS),
            api_versions=["proxy.tulle.dev/v2"]))
        try:
            msg = await raw.next()
            assert isinstance(msg, Error) and "proxy.tulle.dev/v1alpha1" in msg.reason
            assert await raw.next() is None
        finally:
            raw.close()
        ps = await proxies(cp.api)
        assert "future-0" not in ps and "future-1" not in ps
        async with aiohttp.ClientSession(headers=auth(cp.api)) as s, \
                s.get(f"{cp.api}/api/v1/proxies") as r:
            assert (await r.json())["stream"]["unsupportedHellos"] == 4
        refused = [ln for ln in cp.log().splitlines() if "future-0" in ln and "refused" in ln]
        assert len(refused) == 1, cp.log()
        assert "unsupported stream protocol version 99" in refused[0]
