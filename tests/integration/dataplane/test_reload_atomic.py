"""`ProxyServer.apply` is all or nothing: a snapshot that fails half way leaves no socket bound
and the previous snapshot untouched.  In-process (the server object), real sockets."""

from __future__ import annotations

import copy
import socket
from pathlib import Path
from typing import Any

import pytest
from tests.support.proxy import free_port, running_proxy, simple_config
from tests.support.rawhttp import RawClient

from tulle.dataplane.server import ApplyError
from tulle.net.ports import listening_inodes


def _base(origin: int) -> dict[str, Any]:
    cfg = simple_config(origin)
    cfg["listeners"][0].update(protocol="http1", port=free_port())
    cfg["version"] = "v1"
    return cfg


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_unreadable_listener_certificate_leaves_nothing_bound(origin: int,
                                                                    tmp_path: Path) -> None:
    async with running_proxy(_base(origin)) as p:
        new = copy.deepcopy(_base(origin))
        new["listeners"][0]["port"] = p.port()
        new["version"] = "v2"
        plain, secure = free_port(), free_port()
        new["listeners"] += [
            {"name": "plain", "port": plain, "protocol": "http1", "route_table": "rt"},
            {"name": "secure", "port": secure, "protocol": "http1", "route_table": "rt",
             "tls": {"cert_file": str(tmp_path / "missing.pem"),
                     "key_file": str(tmp_path / "missing.key")}},
        ]
        with pytest.raises(ApplyError, match="listener secure"):
            await p.apply(new)

        assert _port_is_free(plain)  # bound before `secure` failed, and released
        assert _port_is_free(secure)
        assert p.server.config is not None and p.server.config.version == "v1"
        assert set(p.server.listeners) == {"out"}
        c = await RawClient.connect(p.port())
        assert (await c.request("GET", "/echo")).status == 200
        c.close()


async def test_unreadable_client_certificate_is_an_apply_error(origin: int,
                                                               tmp_path: Path) -> None:
    async with running_proxy(_base(origin)) as p:
        new = _base(origin)
        new["listeners"][0]["port"] = p.port()
        new["clusters"][0]["tls"] = {"cert_file": str(tmp_path / "c.pem"),
                                     "key_file": str(tmp_path / "c.key")}
        with pytest.raises(ApplyError, match="cannot build the snapshot"):
            await p.apply(new)
        assert p.server.clusters.clusters["backend"].cfg.tls is None
        c = await RawClient.connect(p.port())
        assert (await c.request("GET", "/echo")).status == 200
        c.close()


async def test_driver_change_on_the_same_port_keeps_the_socket(origin: int) -> None:
    cfg = _base(origin)
    async with running_proxy(cfg) as p:
        port = p.port()
        inode = listening_inodes(port)
        idle = await RawClient.connect(port)
        assert (await idle.request("GET", "/echo")).status == 200

        cfg = copy.deepcopy(cfg)
        cfg["listeners"][0]["protocol"] = "auto"  # another driver: a new server, same socket
        await p.apply(cfg)

        assert listening_inodes(port) == inode
        assert await idle.closed_by_peer(timeout=5)  # the old server's connections drain
        fresh = await RawClient.connect(port)
        assert (await fresh.request("GET", "/echo")).status == 200
        fresh.close()


async def test_a_listener_renamed_on_the_same_port_takes_the_socket_over(origin: int) -> None:
    cfg = _base(origin)
    async with running_proxy(cfg) as p:
        port = p.port()
        inode = listening_inodes(port)
        cfg = copy.deepcopy(cfg)
        cfg["listeners"][0]["name"] = "renamed"
        await p.apply(cfg)
        assert listening_inodes(port) == inode
        assert p.port("renamed") == port
        c = await RawClient.connect(port)
        assert (await c.request("GET", "/echo")).status == 200
        c.close()


async def test_apply_is_refused_while_draining(origin: int) -> None:
    async with running_proxy(_base(origin)) as p:
        await p.server.drain(timeout=1.0)
        with pytest.raises(ApplyError, match="draining"):
            await p.apply(_base(origin))
