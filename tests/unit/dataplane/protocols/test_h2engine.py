"""The engine switch reaches the compiled drivers (ADR 0061).

The HTTP/2 drivers are compiled with mypyc when built, and mypyc calls a class it sees
directly: a driver that made its codec by the `H2Codec` name (the libnghttp2 class to the type
checker) crashed a proxy under `TULLE_H2_ENGINE=h2` at its first connection.  Each engine runs
here in a fresh process (the engine is chosen once per process), on whichever copy of the hot
path this run uses, and both drivers must hold that engine's codec and speak with it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = r'''
import asyncio
import json
import sys
from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.listeners.listener_context import ListenerContext
from tulle.dataplane.listeners.http2 import H2Downstream
from tulle.dataplane.listeners.memory import MemoryTransport
from tulle.dataplane.protocols.h2common import PREFACE
from tulle.dataplane.routing.router import Router
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.dataplane.upstream.cluster import ClusterManager
from tulle.dataplane.upstream.http2 import H2UpConnection
from tulle.proxyconfig import validate


async def main() -> None:
    cfg = validate({
        "listeners": [{"name": "l", "port": 1, "protocol": "http2", "route_table": "rt"}],
        "clusters": [{"name": "o", "protocol": "http2",
                      "endpoints": [{"address": "127.0.0.1", "port": 9}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [
            {"name": "a", "domains": ["*"], "rules": [{"backends": [{"cluster": "o"}]}]}]}],
        "settings": json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}})
    metrics = ProxyMetrics()
    routers = {t.name: Router(t, cfg.settings.request_timeout_ms) for t in cfg.route_tables}
    manager = ClusterManager(metrics)
    prepared = manager.prepare(cfg.clusters, cfg.settings)
    manager.commit(prepared)
    ctx = ListenerContext(cfg.listeners[0], cfg.settings, routers, prepared.runtimes, metrics)
    handle = ListenerHandle("l", ctx, m_active=metrics.connections_active.labels("l"),
                            m_total=metrics.connections_total.labels("l"))
    down = H2Downstream(handle)
    down_t = MemoryTransport()
    down.connection_made(down_t)
    # A client preface and SETTINGS: the server answers with its SETTINGS and the ACK.
    down.data_received(PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    served = bytes(down_t.out)
    cluster = prepared.runtimes["o"]
    up = H2UpConnection(cluster.pool_for(cluster.endpoints[0]))
    up_t = MemoryTransport()
    up.connection_made(up_t)
    print(type(down.codec).__module__, type(up.codec).__module__,
          served[3] == 4 and not down.closing, bytes(up_t.out).startswith(PREFACE))
    down_t.close()
    up_t.close()


asyncio.run(main())
'''

MODULES = {"nghttp2": "tulle.dataplane.protocols.nghttp2",
           "h2": "tulle.dataplane.protocols.http2"}


@pytest.mark.parametrize("engine", sorted(MODULES))
def test_both_drivers_run_the_engine_the_process_chose(engine: str) -> None:
    env = {**os.environ, "TULLE_H2_ENGINE": engine}
    run = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == [MODULES[engine], MODULES[engine], "True", "True"], run.stdout


@pytest.mark.parametrize("engine", sorted(MODULES))
def test_both_drivers_speak_with_the_largest_high_water_mark(engine: str) -> None:
    # 64 x buffer_high_water_bytes is the connection window: past HTTP/2's 2^31 - 1 from
    # 32 MiB on, and both engines refused the session (every HTTP/2 connection failed, ADR
    # 0110).  The windows are capped at 2^31 - 1 (`h2common.windows_for`).
    env = {**os.environ, "TULLE_H2_ENGINE": engine}
    run = subprocess.run([sys.executable, "-c", SCRIPT, '{"buffer_high_water_bytes": 67108864}'],
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == [MODULES[engine], MODULES[engine], "True", "True"], run.stdout
