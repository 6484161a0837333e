"""A real, private Prometheus server for tests, from Debian's `prometheus` package.

    async with prometheus_server([admin_port, ...], interval="500ms") as prom:
        await prom.wait_for_targets()
        result = await prom.query('sum(rate(istio_requests_total[1m]))')

Debian's Prometheus (2.42) scrapes with `Accept: application/openmetrics-text;version=1.0.0,
...,text/plain;version=0.0.4;q=0.5,*/*;q=0.1` (seen on the wire), so through it the proxies'
OpenMetrics exposition is what gets parsed.

It listens on a free 127.0.0.1 port with its own temp dir for the TSDB, scrapes the given
`127.0.0.1:<port>` targets' `/metrics` every `interval`, and is stopped (SIGTERM, then SIGKILL)
and its dir removed at the end, also when the test fails; if the test process itself dies,
Prometheus gets SIGTERM (PR_SET_PDEATHSIG, as `tests.support.subproc` does for proxies).
`scripts/install-system-deps.sh test` installs the binary; without it the tests that need one
are skipped, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.support.proxy import free_port
from tests.support.subproc import _die_with_test

BINARY = shutil.which("prometheus") or "/usr/bin/prometheus"
START_TIMEOUT = 30.0


@dataclass
class PrometheusServer:
    port: int
    root: Path
    proc: asyncio.subprocess.Process | None = field(default=None, repr=False)

    async def _get(self, path: str) -> Any:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                         "connection: close\r\n\r\n".encode())
            raw = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" in head.lower():
            body = _unchunk(body)
        status = int(head.split(b" ", 2)[1])
        return status, body

    async def ready(self) -> bool:
        try:
            status, _ = await self._get("/-/ready")
        except OSError:
            return False
        return status == 200

    async def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector (`[{"metric": {...}, "value": [t, "v"]}]`)."""
        status, body = await self._get("/api/v1/query?" + urlencode({"query": promql}))
        doc = json.loads(body)
        if status != 200 or doc.get("status") != "success":
            raise AssertionError(f"query {promql!r} failed: {status} {doc}")
        return list(doc["data"]["result"])

    async def scalar(self, promql: str) -> float | None:
        """The value of a query whose result is one sample; None when it has none."""
        result = await self.query(promql)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    async def targets(self) -> list[dict[str, Any]]:
        status, body = await self._get("/api/v1/targets")
        assert status == 200, body
        return list(json.loads(body)["data"]["activeTargets"])

    async def wait_for_targets(self, timeout: float = 20.0) -> None:
        """Back once every target was scraped successfully at least once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            targets = await self.targets()
            if targets and all(t["health"] == "up" for t in targets):
                return
            if loop.time() > deadline:
                raise AssertionError(f"targets not up: {targets}")
            await asyncio.sleep(0.1)

    async def wait_until(self, promql: str, expected: float, timeout: float = 20.0) -> None:
        """Back once `promql` (one sample) equals `expected`: the scrapes have caught up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        got: float | None = None
        while loop.time() < deadline:
            got = await self.scalar(promql)
            if got == expected:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{promql}: {got}, expected {expected}")

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _unchunk(body: bytes) -> bytes:
    out = bytearray()
    for _ in range(100_000):
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return bytes(out)


def available() -> bool:
    return shutil.which("prometheus") is not None


def scrape_config(targets: list[int], interval: str) -> str:
    lines = ["global:", f"  scrape_interval: {interval}", f"  scrape_timeout: {interval}",
             "scrape_configs:", "  - job_name: tulle-proxies", "    static_configs:",
             "      - targets: [" + ", ".join(f'"127.0.0.1:{p}"' for p in targets) + "]"]
    return "\n".join(lines) + "\n"


@contextlib.asynccontextmanager
async def prometheus_server(targets: list[int], *, interval: str = "500ms",
                            ) -> AsyncIterator[PrometheusServer]:
    if not available():
        pytest.skip("prometheus is not installed (scripts/install-system-deps.sh test)")
    root = Path(tempfile.mkdtemp(prefix="tulle-promtest-"))
    (root / "prometheus.yml").write_text(scrape_config(targets, interval))
    server = PrometheusServer(free_port(), root)
    log = (root / "prometheus.log").open("wb")
    try:
        server.proc = await asyncio.create_subprocess_exec(
            BINARY, f"--config.file={root / 'prometheus.yml'}",
            f"--storage.tsdb.path={root / 'data'}",
            f"--web.listen-address=127.0.0.1:{server.port}",
            "--storage.tsdb.retention.time=1h", "--log.level=warn",
            stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True, preexec_fn=_die_with_test)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not await server.ready():
            if server.proc.returncode is not None or loop.time() > deadline:
                raise RuntimeError("prometheus did not start: "
                                   + (root / "prometheus.log").read_text()[-2000:])
            await asyncio.sleep(0.1)
        yield server
    finally:
        await server.stop()
        log.close()
        shutil.rmtree(root, ignore_errors=True)
