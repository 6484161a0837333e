"""`tulle proxy run --control-plane ...`: a proxy whose config comes from the push stream.

Start-up order: admin first (so `/ready` answers 503 while there is nothing to serve), then the
cached snapshot if one exists, with the cached identities it needs (decision 4: keep serving
across our own restart even when the control plane is down; ADR 0123), then the subscription,
which replaces both as soon as the control plane answers.  SIGTERM takes the proxy out of its
Services' endpoints (it says `Draining`, or leaves the stream), keeps accepting while its
callers learn it (`settings.drain_propagation_ms`, ADR 0113; a second SIGTERM / SIGINT ends
that period), drains exactly as a file-configured proxy does, and sends a last stats report
(`shut_down`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path

from tulle.dataplane.agent import Agent
from tulle.dataplane.identity_cache import IDENTITY_DIR, IdentityCache
from tulle.dataplane.listeners.admin import start_admin
from tulle.dataplane.server import ProxyServer
from tulle.dataplane.stream_tls import StreamTrust
from tulle.proxyconfig.settings import SUBSCRIBED_DRAIN_PROPAGATION_MS
from tulle.proxyconfig.stream import WorkloadInfo

log = logging.getLogger("tulle.proxy")


def parse_address(text: str, default_port: int = 15680) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, default_port
    return host.strip("[]") or "127.0.0.1", int(port)


async def serve(addresses: Sequence[tuple[str, int]], workload: WorkloadInfo, *,
                cache_dir: Path | None, admin_address: str = "127.0.0.1",
                admin_port: int = 15000, drain_timeout: float = 15.0, token: str = "",
                trust: StreamTrust | None = None, workloads: Sequence[WorkloadInfo] = (),
                node_tokens: Mapping[str, str] | None = None) -> int:
    """`workloads` / `node_tokens`: a node agent's further workloads and their bootstrap
    tokens by `namespace/name` (ADR 0032, 0047)."""
    loop = asyncio.get_running_loop()
    server = ProxyServer()
    admin = await start_admin(server, admin_address, admin_port) if admin_port else None
    cache_path = (cache_dir / f"{workload.namespace}.{workload.name}.json"
                  if cache_dir is not None else None)
    agent = Agent(server, addresses, workload, cache_path=cache_path, token=token,
                  trust=trust, workloads=workloads, node_tokens=node_tokens,
                  identities=IdentityCache(cache_dir / IDENTITY_DIR) if cache_dir else None)
    await agent.start_from_cache()
    stop = asyncio.Event()
    again = asyncio.Event()
    """A second SIGTERM / SIGINT: the rest of the propagation period is skipped."""

    def on_signal() -> None:
        if stop.is_set():
            again.set()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    task = loop.create_task(agent.run())
    log.info("proxy for %s subscribing to %s",
             ", ".join(f"{w.namespace}/{w.name}" for w in (workload, *workloads)),
             ", ".join(f"{h}:{p}" for h, p in addresses))
    await stop.wait()
    timeout = server.config.settings.drain_timeout_ms / 1000 if server.config else drain_timeout
    await shut_down(agent, task, server, timeout, period=propagation_period(server), cut=again)
    if admin is not None:
        admin.close()
    await server.close()
    return 0


def propagation_period(server: ProxyServer) -> float:
    """Seconds to keep accepting after `Draining`: the settings' own, else the default."""
    cfg = server.config
    ms = cfg.settings.drain_propagation_ms if cfg is not None else None
    return (SUBSCRIBED_DRAIN_PROPAGATION_MS if ms is None else ms) / 1000


async def shut_down(agent: Agent, task: asyncio.Task[None], server: ProxyServer,
                    timeout: float, *, period: float = 0.0,
                    cut: asyncio.Event | None = None) -> None:
    """SIGTERM's order.  First out of every Service's endpoints, at once: by saying `Draining`
    on the stream where the control plane takes it (ADR 0092), else by leaving the stream
    (closing it is the signal, ADR 0040).  Then drain.  A last stats report goes before the
    stream is left, so `tulle stat` keeps a stopping proxy's last interval; with `Draining`
    the stream and its reports stay up through the drain, so the requests the drain
    finishes are reported too.

    After `Draining` and before the drain, the listeners keep accepting for `period` seconds
    (ADR 0113; `cut` set ends it early): the callers get the new endpoints some milliseconds
    after the control plane took `Draining`, and a listener closed meanwhile failed their
    requests with 503 `cannot connect`.  No period when `Draining` did not go (the stream was
    down, so the proxy was out of the endpoints already, or an older control plane)."""
    draining = await agent.announce_draining()
    if draining:
        if await server.keep_accepting(period, cut or asyncio.Event()):
            log.info("kept accepting %.3f s while the callers learn this proxy left", period)
        await server.drain(timeout)
    agent.stop()
    await agent.last_report()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if not draining:
        await server.drain(timeout)


def run(addresses: Sequence[str], workload: WorkloadInfo, *, cache_dir: Path | None,
        admin_port: int = 15000, token: str = "", trust: StreamTrust | None = None,
        workloads: Sequence[WorkloadInfo] = (),
        node_tokens: Mapping[str, str] | None = None) -> int:
    import uvloop

    return uvloop.run(serve([parse_address(a) for a in addresses], workload,
                            cache_dir=cache_dir, admin_port=admin_port, token=token,
                            trust=trust, workloads=workloads, node_tokens=node_tokens))
