"""What a running proxy has imported: only what its config needs (docs/performance.md, memory).

The proxy's resident memory is mostly the interpreter and its modules, so a module that slips
onto the `tulle proxy run` path costs every pod.  Each test runs the real command entry point
(`tulle.cli.main:main`, as the `tulle` script does) in a subprocess on a JSON config, carries
traffic through it, stops it with SIGTERM, and reads the names in `sys.modules` that an
`atexit` hook wrote on the way out: the state after start-up, the first requests, the
admin endpoint and the drain.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.h2peers import running_h2_origin
from tests.support.proxy import simple_config
from tests.support.subproc import assign_ports, http_get

from tulle.dataplane.protocols.h2engine import ENGINE

# The entry point exactly as the `tulle` console script calls it; `atexit` and `sys` are loaded
# before any user code, so the hook adds nothing to what it reports.
DRIVER = """\
import atexit, sys
out = sys.argv[1]
def _dump():
    with open(out, "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
atexit.register(_dump)
sys.argv = ["tulle", *sys.argv[2:]]
from tulle.cli.main import main
main()
"""

FORBIDDEN_ALWAYS = (
    "yaml",  # the config file is JSON: msgspec decodes it
    "pydantic", "pydantic_core", "fastapi", "starlette", "uvicorn",  # the control plane's API
    "tulle.api", "tulle.controlplane", "tulle.cli.resources", "tulle.cli.client",
    "urllib.request", "http.client", "email",  # the REST client of the CLI
    "cryptography", "grpc", "google.protobuf", "sqlite3", "aiosqlite", "asyncpg", "rich",
    "hashlib",  # the file watcher compares contents
    "ctypes",  # only the worker supervisor's prctl needs it
    "encodings.idna",  # uvloop resolving a numeric admin address through the thread pool
    "click", "tulle.cli.commands",  # `tulle proxy run` is parsed without click (ADR 0068)
    "typing_extensions",  # msgspec imported without its optional backports (ADR 0081)
    "decimal", "_decimal",  # nor the Decimal and UUID types nothing in the proxy has
    "uuid", "_uuid", "platform",  # (ADR 0084)
)
"""Never on the path of a proxy run from a file."""

ONLY_WHEN_NAMED = (
    "tulle.dataplane.dns.server", "tulle.dataplane.dns.resolver",  # a `dns` section
    "tulle.dataplane.filters.authz", "tulle.dataplane.filters.mirror",  # a route's filters
    "tulle.dataplane.filters.fault", "tulle.dataplane.filters.redirect",
    "tulle.dataplane.filters.rewrite", "tulle.dataplane.filters.ratelimit",
    "tulle.dataplane.network.authz", "tulle.dataplane.network.rate_limit",  # L4 filters
    "tulle.dataplane.network.connection_limit", "tulle.dataplane.network.flow_log",
    "tulle.dataplane.telemetry.otlp",  # an OTLP log sink or trace exporter
    "pathlib", "ipaddress", "urllib.parse",  # a CIDR, an OTLP endpoint, a percent-escape
)
"""Loaded only when the config names them (ADR 0068); the first test's config names none."""

H2_ENGINE = ("h2", "hpack", "hyperframe", "tulle.dataplane.protocols.http2")
NG_ENGINE = ("tulle.dataplane.protocols.nghttp2", "tulle.dataplane.protocols.ng2._ng2")
HTTP2 = (*(NG_ENGINE if ENGINE == "nghttp2" else H2_ENGINE),
         "tulle.dataplane.protocols.h2translate")
"""Only when a listener or a cluster speaks HTTP/2 (or a sniffing listener meets h2)."""
NOT_WITH_THIS_ENGINE = H2_ENGINE if ENGINE == "nghttp2" else NG_ENGINE
"""The other engine is never loaded (ADR 0051: the pure-Python h2 stack costs 1.2 MB)."""


def _loaded(name: str, modules: set[str]) -> bool:
    return name in modules or any(m.startswith(name + ".") for m in modules)


async def _run_proxy(cfg: dict[str, Any], tmp_path: Path, traffic: Any) -> set[str]:
    """Run `tulle proxy run --config x.json` until `traffic(cfg)` is done; its modules."""
    cfg = assign_ports(cfg)
    path = tmp_path / "proxy.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "modules.txt"
    log = (tmp_path / "proxy.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", DRIVER, str(out), "proxy", "run", "--config", str(path),
        "--watch-interval", "0", "--log-level", "warning",
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    try:
        admin = int(cfg["admin"]["port"])
        loop = asyncio.get_running_loop()
        end = loop.time() + 20
        while True:
            assert proc.returncode is None, (tmp_path / "proxy.log").read_text()
            try:
                if (await http_get(admin, "/ready"))[0] == 200:
                    break
            except OSError:
                pass
            assert loop.time() < end, "the proxy did not become ready"
            await asyncio.sleep(0.05)
        await traffic(cfg)
        for page in ("/metrics", "/config_dump", "/clusters"):
            assert (await http_get(admin, page))[0] == 200
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0, (tmp_path / "proxy.log").read_text()
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        log.close()
    return set(out.read_text().split())


def _port(cfg: dict[str, Any], name: str) -> int:
    return next(int(lc["port"]) for lc in cfg["listeners"] if lc["name"] == name)


async def test_http1_proxy_from_a_json_file_loads_no_http2_yaml_or_control_plane(
        origin: int, tmp_path: Path) -> None:
    cfg = simple_config(origin)  # an explicit HTTP/1 listener ...
    cfg["listeners"].append({"name": "sniff", "port": 0, "protocol": "auto",  # ... and a sniffing one
                             "route_table": "rt"})

    async def traffic(cfg: dict[str, Any]) -> None:
        for name in ("out", "sniff"):
            status, body = await http_get(_port(cfg, name), "/echo")
            assert status == 200, body

    modules = await _run_proxy(cfg, tmp_path, traffic)
    # The dump is real: what served the requests is in it.
    for name in ("tulle.dataplane.server", "tulle.dataplane.upstream.http1", "httptools",
                 "tulle.dataplane.listeners.detect", "uvloop"):
        assert name in modules, name
    loaded = [m for m in (*FORBIDDEN_ALWAYS, *HTTP2, *ONLY_WHEN_NAMED) if _loaded(m, modules)]
    assert loaded == []


async def test_a_plain_http1_listener_loads_no_protocol_detection(
        origin: int, tmp_path: Path) -> None:
    cfg = simple_config(origin)

    async def traffic(cfg: dict[str, Any]) -> None:
        status, body = await http_get(_port(cfg, "out"), "/echo")
        assert status == 200, body

    modules = await _run_proxy(cfg, tmp_path, traffic)
    assert "tulle.dataplane.listeners.http1" in modules
    detection = ("tulle.dataplane.listeners.detect", "tulle.dataplane.network.relay",
                 "tulle.dataplane.protocols.clienthello", *ONLY_WHEN_NAMED,
                 "tulle.dataplane.tlsread", "mmap")  # TLS (and the TCP relay's TLS side)
    assert [m for m in detection if _loaded(m, modules)] == []


async def test_http2_is_loaded_when_a_listener_speaks_it(origin: int, tmp_path: Path) -> None:
    """The other side of the first test: the dump does show HTTP/2 when it is needed."""
    cfg = simple_config(origin, protocol="http2")  # h2c prior knowledge downstream

    async def traffic(cfg: dict[str, Any]) -> None:
        pass

    modules = await _run_proxy(cfg, tmp_path, traffic)
    assert [m for m in HTTP2 if not _loaded(m, modules)] == []
    assert [m for m in FORBIDDEN_ALWAYS if _loaded(m, modules)] == []
    assert [m for m in NOT_WITH_THIS_ENGINE if _loaded(m, modules)] == []


async def test_http2_cluster_loads_http2_at_its_first_request(tmp_path: Path) -> None:
    async with running_h2_origin() as (h2_port, h2_origin):
        cfg = simple_config(h2_port, cluster_protocol="http2")  # HTTP/1 in, h2c out

        async def traffic(cfg: dict[str, Any]) -> None:
            status, body = await http_get(_port(cfg, "out"), "/echo")
            assert status == 200, body

        modules = await _run_proxy(cfg, tmp_path, traffic)
        assert h2_origin.requests == 1
    assert [m for m in HTTP2 if not _loaded(m, modules)] == []
    assert "tulle.dataplane.listeners.http2" not in modules  # no HTTP/2 downstream
