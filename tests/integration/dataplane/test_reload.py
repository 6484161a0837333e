"""Config swaps on a running proxy process (file watch and SIGHUP) without dropping a connection.

Each test scripts an exchange across a swap: what was in flight finishes, a keep-alive client's
next request follows the new routes on the same connection, sockets and upstream pools carry
over, and a config that is invalid or cannot be bound changes nothing.
"""

from __future__ import annotations

import copy
import json
import signal
import socket
from pathlib import Path
from typing import Any

import pytest
from tests.support.proxy import free_port
from tests.support.rawhttp import RawClient
from tests.support.subproc import ProxyProcess, proxy_process

from tulle.net.ports import listening_inodes

RELOADS = "tulle_proxy_config_reloads_total"


def _listener(name: str, port: int = 0) -> dict[str, Any]:
    return {"name": name, "port": port, "protocol": "http1", "route_table": "rt"}


def _config(origin: int, prefix: str, *listeners: str, version: str = "v1") -> dict[str, Any]:
    """Listeners routing `prefix` (and nothing else) to the origin."""
    return {
        "version": version,
        "listeners": [_listener(n) for n in listeners],
        "clusters": [{"name": "backend",
                      "endpoints": [{"address": "127.0.0.1", "port": origin}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
             "backends": [{"cluster": "backend"}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/delay"}}],
             "backends": [{"cluster": "backend"}]}]}]}],
    }


def _next(p: ProxyProcess, prefix: str, *listeners: str, version: str) -> dict[str, Any]:
    """The running config with other routes/listeners; kept listeners keep their ports."""
    cfg = copy.deepcopy(p.config)
    cfg["version"] = version
    rule = cfg["route_tables"][0]["virtual_hosts"][0]["rules"][0]
    rule["matches"][0]["path"]["value"] = prefix
    ports = {lst["name"]: lst["port"] for lst in cfg["listeners"]}
    cfg["listeners"] = [_listener(n, ports.get(n) or free_port()) for n in listeners]
    return cfg


async def _version(p: ProxyProcess) -> str:
    status, body = await p.admin("/config_dump")
    assert status == 200
    return str(json.loads(body)["version"])


async def _swap(p: ProxyProcess, cfg: dict[str, Any], result: str = "applied") -> None:
    before = await p.metric(RELOADS, result=result)
    p.write_config(cfg)
    await p.wait_reload(result, before)


async def test_swap_keeps_connections_and_sockets_and_follows_new_routes(
        origin: int, tmp_path: Path) -> None:
    async with proxy_process(_config(origin, "/echo/old", "out", "gone"), tmp_path) as p:
        out_socket = listening_inodes(p.port("out"))
        gone_port = p.port("gone")
        assert len(out_socket) == 1
        keep = await RawClient.connect(p.port("out"))
        assert (await keep.request("GET", "/echo/old")).status == 200
        assert (await keep.request("GET", "/echo/new")).status == 404
        long_out = await RawClient.connect(p.port("out"))
        long_out.send("GET", "/delay/1500")
        long_gone = await RawClient.connect(p.port("gone"))
        long_gone.send("GET", "/delay/1500")
        await p.wait_upstream_busy(2)

        new = _next(p, "/echo/new", "out", "extra", version="v2")
        await _swap(p, new)
        p.config = new
        assert await _version(p) == "v2"

        # The same keep-alive connection now follows the new routes.
        assert (await keep.request("GET", "/echo/new")).status == 200
        assert (await keep.request("GET", "/echo/old")).status == 404
        # In-flight requests finish, on the kept and on the removed listener alike.
        r = await long_out.response()
        assert (r.status, r.body) == (200, b"late\n")
        r = await long_gone.response()
        assert (r.status, r.body) == (200, b"late\n")
        assert r.headers["connection"] == "close"  # the removed listener drains
        assert await long_gone.closed_by_peer()
        # The kept listener kept its socket; the removed one is gone; the new one serves.
        assert listening_inodes(p.port("out")) == out_socket
        assert listening_inodes(gone_port) == set()
        with pytest.raises(ConnectionRefusedError):
            await RawClient.connect(gone_port)
        extra = await RawClient.connect(p.port("extra"))
        assert (await extra.request("GET", "/echo/new")).status == 200
        for c in (keep, long_out, extra):
            c.close()
        assert await p.stop() == 0


async def test_upstream_pool_carries_over_for_an_unchanged_cluster(origin: int,
                                                                   tmp_path: Path) -> None:
    async with proxy_process(_config(origin, "/echo/old", "out"), tmp_path) as p:
        c = await RawClient.connect(p.port())
        assert (await c.request("GET", "/echo/old")).status == 200
        c.close()
        assert await p.metric("tulle_proxy_upstream_connections_total", cluster="backend") == 1

        await _swap(p, _next(p, "/echo/new", "out", version="v2"))

        c = await RawClient.connect(p.port())
        assert (await c.request("GET", "/echo/new")).status == 200
        c.close()
        # The request went over the pooled connection opened before the swap.
        assert await p.metric("tulle_proxy_upstream_connections_total", cluster="backend") == 1
        [cluster] = json.loads((await p.admin("/clusters"))[1])
        assert cluster["connections_active"] == 1


async def test_invalid_file_is_rejected_with_field_paths_and_old_config_stays(
        origin: int, tmp_path: Path) -> None:
    async with proxy_process(_config(origin, "/echo", "out"), tmp_path) as p:
        keep = await RawClient.connect(p.port())
        assert (await keep.request("GET", "/echo")).status == 200
        bad = copy.deepcopy(p.config)
        bad["version"] = "v-bad"
        bad["listeners"][0]["port"] = 70000
        bad["route_tables"][0]["virtual_hosts"][0]["rules"][0]["backends"][0]["cluster"] = 7

        await _swap(p, bad, result="rejected")

        assert await p.metric(RELOADS, result="applied") == 0
        log = p.log()
        assert "listeners[0].port: must be <= 65535" in log
        assert "route_tables[0].virtual_hosts[0].rules[0].backends[0].cluster" in log
        assert await _version(p) == "v1"
        assert (await keep.request("GET", "/echo")).status == 200
        fresh = await RawClient.connect(p.port())
        assert (await fresh.request("GET", "/echo")).status == 200
        keep.close()
        fresh.close()


async def test_port_in_use_fails_the_swap_and_nothing_is_half_applied(
        origin: int, tmp_path: Path) -> None:
    async with proxy_process(_config(origin, "/echo", "out"), tmp_path) as p:
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        try:
            new = _next(p, "/echo", "out", "first", "second", version="v2")
            new["listeners"][2]["port"] = taken.getsockname()[1]
            await _swap(p, new, result="failed")

            assert f"listener second: cannot bind 127.0.0.1:{new['listeners'][2]['port']}" \
                in p.log()
            assert await _version(p) == "v1"
            # `first` bound fine before `second` failed, and was unbound again.
            with pytest.raises(ConnectionRefusedError):
                await RawClient.connect(new["listeners"][1]["port"])
            c = await RawClient.connect(p.port())
            assert (await c.request("GET", "/echo")).status == 200
            c.close()
        finally:
            taken.close()

        # Once the port is free, SIGHUP retries the same file (its contents did not change).
        before = await p.metric(RELOADS, result="applied")
        p.signal(signal.SIGHUP)
        await p.wait_reload("applied", before)
        assert await _version(p) == "v2"
        p.config = new
        c = await RawClient.connect(p.port("second"))
        assert (await c.request("GET", "/echo")).status == 200
        c.close()


async def test_sighup_reloads_when_the_watcher_is_off(origin: int, tmp_path: Path) -> None:
    async with proxy_process(_config(origin, "/echo/old", "out"), tmp_path,
                             watch_interval=0) as p:
        p.write_config(_next(p, "/echo/new", "out", version="v2"))
        c = await RawClient.connect(p.port())
        assert (await c.request("GET", "/echo/new")).status == 404  # not watched: still v1

        p.signal(signal.SIGHUP)
        await p.wait_reload("applied", 0)

        assert (await c.request("GET", "/echo/new")).status == 200
        assert await _version(p) == "v2"
        c.close()
