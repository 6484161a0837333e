"""Flow control: bodies stream through the proxy in buffer-sized steps.

The memory tests run the real `tulle proxy run` as a subprocess and read its VmRSS from /proc
while curl moves 1 GiB each way, and while a client stops reading a 1 GiB response.  The bound
(30 MB over the idle baseline) is a functional memory-safety assertion: a proxy that buffered a
body would grow by hundreds of MB.  The in-loop test checks the mechanism directly: a slow
reader leaves the upstream unread and the client's write buffer near the high-water mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from tests.support.proxy import free_port, running_proxy, simple_config
from tests.support.rawservers import connect

GIB = 1 << 30
RSS_BOUND = 30 << 20
TULLE = str(Path(sys.executable).parent / "tulle")


async def test_slow_reader_pauses_the_upstream(origin: int) -> None:
    size = 64 << 20
    async with running_proxy(simple_config(origin)) as p:
        r, w = await connect(p.port())
        w.write(b"GET /bytes/%d HTTP/1.1\r\nHost: a\r\n\r\n" % size)
        await r.readexactly(1 << 16)  # then stop reading
        conn = next(iter(p.server.listeners["out"].connections))
        for _ in range(500):
            if conn._write_paused:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.01)
        assert conn._write_paused  # type: ignore[attr-defined]
        upstream = conn._queue[0].stream.conn  # type: ignore[attr-defined]
        assert not upstream.transport.is_reading()
        await asyncio.sleep(0.3)  # a buffering proxy would keep pulling meanwhile
        assert conn.transport.get_write_buffer_size() < 1 << 20  # type: ignore[attr-defined]
        assert p.metric("tulle_proxy_downstream_bytes_sent_total") < 16 << 20
        # Reading again drains the rest, intact in length.
        total = 1 << 16
        while total < size:
            chunk = await r.read(1 << 20)
            assert chunk
            total += len(chunk)
        w.close()


def vm_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@contextlib.asynccontextmanager
async def proxy_process(origin: int, tmp_path: Path) -> AsyncIterator[tuple[int, int]]:
    port = free_port()
    cfg = simple_config(origin, settings={"request_timeout_ms": 0})
    cfg["listeners"][0]["port"] = port
    path = tmp_path / "proxy.json"
    path.write_text(json.dumps(cfg))
    proc = await asyncio.create_subprocess_exec(
        TULLE, "proxy", "run", "--config", str(path), "--watch-interval", "0",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        for _ in range(500):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.02)
        else:
            raise AssertionError("proxy did not start")
        yield proc.pid, port
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def peak_rss_while(pid: int, work: asyncio.Future[object]) -> int:
    peak = vm_rss(pid)
    while not work.done():
        peak = max(peak, vm_rss(pid))
        await asyncio.sleep(0.05)
    await work
    return peak


async def curl(*args: str) -> str:
    proc = await asyncio.create_subprocess_shell(
        " ".join(args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_1gib_each_way_keeps_rss_flat(origin: int, tmp_path: Path) -> None:
    async with proxy_process(origin, tmp_path) as (pid, port):
        await curl("curl", "-sS", f"http://127.0.0.1:{port}/bytes/1000", "-o", "/dev/null")
        baseline = vm_rss(pid)
        # Download: 1 GiB, counted by curl.
        down = asyncio.ensure_future(curl(
            "curl", "-sS", "-o", "/dev/null", "-w", "%{size_download}",
            f"http://127.0.0.1:{port}/bytes/{GIB}"))
        peak_down = await peak_rss_while(pid, down)
        assert int(down.result()) == GIB
        # Upload: 1 GiB from a generator, streamed (chunked) by curl, checked by the origin.
        up = asyncio.ensure_future(curl(
            f"head -c {GIB} /dev/zero |", "curl", "-sS", "-X", "POST", "-T", "-",
            f"http://127.0.0.1:{port}/sink"))
        peak_up = await peak_rss_while(pid, up)
        assert json.loads(up.result())["len"] == GIB
        growth = max(peak_down, peak_up) - baseline
        print(f"proxy RSS baseline {baseline >> 20} MiB, peak growth down "
              f"{(peak_down - baseline) >> 20} MiB, up {(peak_up - baseline) >> 20} MiB")
        assert growth < RSS_BOUND


async def test_slow_reader_of_1gib_keeps_rss_flat(origin: int, tmp_path: Path) -> None:
    async with proxy_process(origin, tmp_path) as (pid, port):
        await curl("curl", "-sS", f"http://127.0.0.1:{port}/bytes/1000", "-o", "/dev/null")
        baseline = vm_rss(pid)
        r, w = await connect(port)
        w.write(b"GET /bytes/%d HTTP/1.1\r\nHost: a\r\n\r\n" % GIB)
        await r.readexactly(1 << 20)
        # Stop reading for a while; the origin could produce hundreds of MB meanwhile.
        peak = baseline
        for _ in range(20):
            await asyncio.sleep(0.05)
            peak = max(peak, vm_rss(pid))
        w.close()
        assert peak - baseline < RSS_BOUND
        assert os.path.exists(f"/proc/{pid}")  # still serving
