"""Run a real proxy in the test's event loop, from a config written as a plain dict.

    async with running_proxy(config) as p:
        port = p.port("out")

The proxy is the production `ProxyServer` (real sockets on loopback, port 0 by default); only
the process around it is the test's.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from tulle.dataplane.listeners.admin import start_admin
from tulle.dataplane.server import ProxyServer
from tulle.net.ports import unused_port
from tulle.proxyconfig import validate


def free_port() -> int:
    """A loopback TCP port nothing listens on (`tulle.net.ports.unused_port`: never one
    from the kernel's ephemeral range, where a client socket could take it first)."""
    return unused_port()


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
