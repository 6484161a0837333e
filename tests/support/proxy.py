"""Run a real proxy in the test's event loop, from a config written as a plain dict.

    async with running_proxy(config) as p:
        port = p.port("out")

The proxy is the production `ProxyServer` (real sockets on loopback, port 0 by default); only
the process around it is the test's.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
from collections.abc import AsyncIterator
from typing import Any, Final

from tulle.dataplane.listeners.admin import start_admin
from tulle.dataplane.server import ProxyServer
from tulle.proxyconfig import validate


def _ephemeral_range() -> tuple[int, int]:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = (int(v) for v in f.read().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return low, high


_EPHEMERAL: Final = _ephemeral_range()
# Ports below the kernel's ephemeral range, in an order of their own per test process: a port
# handed out here is never some client socket's source port by the time a listener binds it.
_CANDIDATES: Final = [p for p in range(10_000, 30_000)
                      if not _EPHEMERAL[0] <= p <= _EPHEMERAL[1]]
random.Random(os.getpid()).shuffle(_CANDIDATES)
_next = 0


def free_port() -> int:
    """A loopback TCP port nothing listens on, for a test's listener to bind a moment later.

    Not port 0's pick: the kernel takes that from the ephemeral range, where any connection
    opened before the listener binds (a sidecar dialling its control plane, an HTTP client)
    can take the same port as its source port; a CI run lost a sidecar's outbound listener that
    way ("cannot bind ...: Address already in use").  Each port is handed out once per process
    (20,000 of them, in a shuffled order) and only if a bind to it succeeds now.
    """
    global _next
    for _ in range(len(_CANDIDATES)):
        port = _CANDIDATES[_next % len(_CANDIDATES)]
        _next += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port below the ephemeral range")


def simple_config(upstream_port: int, *, protocol: str = "http1",
                  cluster_protocol: str = "http1", settings: dict[str, Any] | None = None,
                  route: bool = True) -> dict[str, Any]:
    """One explicit listener routing everything to one cluster with one endpoint."""
    listener: dict[str, Any] = {"name": "out", "port": 0, "protocol": protocol}
    if route:
        listener["route_table"] = "rt"
    else:
        listener["cluster"] = "backend"
    cfg: dict[str, Any] = {
        "admin": {"port": 0},
        "listeners": [listener],
        "clusters": [{"name": "backend", "protocol": cluster_protocol,
                      "endpoints": [{"address": "127.0.0.1", "port": upstream_port}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [
            {"name": "any", "rules": [{"backends": [{"cluster": "backend"}]}]}]}],
    }
    if settings:
        cfg["settings"] = settings
    return cfg


class RunningProxy:
    def __init__(self, server: ProxyServer, admin_port: int) -> None:
        self.server = server
        self.admin_port = admin_port

    def port(self, listener: str = "out") -> int:
        return self.server.bound_port(listener)

    def url(self, listener: str = "out", path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port(listener)}{path}"

    async def apply(self, raw: dict[str, Any]) -> None:
        await self.server.apply(validate(raw))

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the series of `name` whose labels include `labels`."""
        total = 0.0
        for line in self.server.metrics.registry.render().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            series, _, value = line.rpartition(" ")
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total


@contextlib.asynccontextmanager
async def running_proxy(raw: dict[str, Any], *, admin: bool = False) -> AsyncIterator[RunningProxy]:
    server = ProxyServer()
    await server.apply(validate(raw))
    admin_server = None
    admin_port = 0
    if admin:
        admin_server = await start_admin(server, "127.0.0.1", 0)
        admin_port = admin_server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    try:
        yield RunningProxy(server, admin_port)
    finally:
        if admin_server is not None:
            admin_server.close()
        await server.close()
