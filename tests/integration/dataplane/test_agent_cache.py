"""`tulle proxy run --control-plane ... --cache-dir D` restarted while its control plane is
away: what it serves from the cached snapshot, and what it refuses (audit, ADR 0108).

A real proxy process whose control plane never answers (nothing listens on the stream port).
Its own cached snapshot is served at once (the documented point of `--cache-dir`); a cache
file of another workload (a directory copied between hosts, one `--cache-dir` given to two
proxies) used to be served as if it were its own, binding that workload's ports, and a cache
file of hundreds of megabytes was read whole (a 300 MB one cost the proxy 1.5 GB and put its
300 MB version in force): both are now refused with one line, and the proxy waits for its
control plane with nothing in force."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.certs import self_signed
from tests.support.controlplane import eventually
from tests.support.proxy import free_port
from tests.support.subproc import TULLE, _die_with_test, http_get, nothing_listens

from tulle.proxyconfig.framing import MAX_FRAME


def _snapshot(node: str, port: int, upstream: int, version: str = "v-cached") -> dict[str, Any]:
    """A snapshot as the agent caches it: no certificate sections, plaintext, one listener."""
    return {"version": version, "node": {"name": node, "namespace": "shop"},
            "listeners": [{"name": "inbound", "port": port, "protocol": "http1",
                           "cluster": "app"}],
            "clusters": [{"name": "app", "protocol": "http1",
                          "endpoints": [{"address": "127.0.0.1", "port": upstream}]}]}


@contextlib.asynccontextmanager
async def _proxy(tmp_path: Path, cache: Path) -> AsyncIterator[tuple[int, Path]]:
    """`api-0`'s proxy with `--cache-dir cache`, its control plane unreachable; (admin port,
    log path) once it has read its cache and started subscribing."""
    ca, _ = self_signed(tmp_path)
    admin, log = free_port(), tmp_path / "proxy.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            TULLE, "proxy", "run", "--control-plane", f"127.0.0.1:{free_port()}",
            "--workload", "api-0", "-n", "shop", "--address", "127.0.0.1", "--admin-port",
            str(admin), "--outbound-port", str(free_port()), "--cache-dir", str(cache),
            "--ca-file", ca, "--log-level", "info", stdin=asyncio.subprocess.DEVNULL,
            stdout=out, stderr=out, start_new_session=True,
            preexec_fn=_die_with_test)  # noqa: PLW1509
    try:
        await eventually(lambda: "subscribing to" in log.read_text(), timeout=30)
        assert proc.returncode is None, log.read_text()
        yield admin, log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


@pytest.mark.timeout(60)
async def test_its_own_cached_snapshot_is_served_before_the_control_plane_answers(
        tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    port = free_port()
    (cache / "shop.api-0.json").write_text(json.dumps(_snapshot("api-0", port, free_port())))
    async with _proxy(tmp_path, cache) as (admin, log):
        assert await http_get(admin, "/ready") == (200, b"READY\n")
        assert "serving cached snapshot v-cached" in log.read_text()
        assert (await http_get(port, "/"))[0] == 503  # its listener, its (absent) app


@pytest.mark.timeout(60)
async def test_another_workloads_cached_snapshot_isnothing_listens(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    port = free_port()
    (cache / "shop.api-0.json").write_text(json.dumps(_snapshot("web-0", port, free_port())))
    async with _proxy(tmp_path, cache) as (admin, log):
        text = log.read_text()
        assert "it is workload 'shop/web-0''s, not shop/api-0's" in text, text
        assert (await http_get(admin, "/ready"))[0] == 503
        assert await nothing_listens(port), "web-0's listener was bound by api-0's proxy"


@pytest.mark.timeout(60)
async def test_a_cached_snapshot_larger_than_a_stream_frame_is_refused_unread(
        tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    doc = json.dumps(_snapshot("api-0", free_port(), free_port(), version="x" * MAX_FRAME))
    (cache / "shop.api-0.json").write_text(doc)
    async with _proxy(tmp_path, cache) as (admin, log):
        text = log.read_text()
        assert f"more than the {MAX_FRAME} a snapshot from the stream can be" in text, text[:500]
        assert (await http_get(admin, "/ready"))[0] == 503
        assert "x" * 100 not in text  # (nothing of it logged either)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["another uid's", "group-writable", "a symbolic link"])
async def test_a_cached_snapshot_another_uid_could_have_written_isnothing_listens(
        tmp_path: Path, how: str) -> None:
    """ADR 0123: with the identities on disk, a cached snapshot is served with mTLS too, so a
    snapshot another uid wrote (a `--cache-dir` others may write to: a bare emptyDir is 0777)
    would be served as the proxy's own config while its control plane is away -- its policies
    gone, its routes elsewhere.  Refused, loudly, unread; the listener it names is not bound."""
    cache = tmp_path / "cache"
    cache.mkdir()
    port = free_port()
    path = cache / "shop.api-0.json"
    doc = json.dumps(_snapshot("api-0", port, free_port()))
    if how == "a symbolic link":
        (tmp_path / "elsewhere.json").write_text(doc)
        path.symlink_to(tmp_path / "elsewhere.json")
    else:
        path.write_text(doc)
        if how == "another uid's":
            os.chown(path, 65534, 65534)
        else:
            path.chmod(0o664)
    async with _proxy(tmp_path, cache) as (admin, log):
        text = log.read_text()
        assert "ignoring" in text and "cached snapshot" in text, text
        if how != "a symbolic link":
            assert "remove it" in text, text
        assert "serving cached snapshot" not in text, text
        assert (await http_get(admin, "/ready"))[0] == 503
        assert await nothing_listens(port), "a snapshot another uid could write was served"
