"""The origin and the proxies under test: their configs, and how each is started.

Every proxy gets the same job — one listener on loopback, everything to one origin — with
the settings a fair comparison needs: keep-alive (and connection reuse) to the origin, one
worker process / thread, no access logging, and the cheap stats endpoint each one has (Tulle's
admin /metrics, HAProxy's stats page, nginx's stub_status).  Each proxy is pinned to CPU 0;
the origin (a separate nginx serving a static 1 KiB file) shares CPU 1 with the load
generators.  Generated configs, pid and log files live in the run's temp directory.

For gRPC a second origin nginx listens h2c and answers every POST to one method with a
static, valid gRPC message (5-byte length prefix + protobuf), `content-type: application/grpc`
and the trailers `grpc-status: 0` and `x-bench-origin: nginx`; the proxies carry it h2c end to
end (HAProxy `proto h2` both sides, nginx `grpc_pass`, Tulle an http2 listener and cluster).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import Proc, ProcessSet, free_port, http_get, http_get_full, tree, wait_port

PROXY_CPU = 0
LOAD_CPU = 1
BODY_PATH = "/1k"
BODY_SIZE = 1024
NGINX_STREAM_MODULE = Path("/usr/lib/nginx/modules/ngx_stream_module.so")

PROTOCOLS = ("http1", "h2c", "tcp", "grpc")

GRPC_PATH = "/bench.Echo/Unary"
GRPC_REQUEST_TEXT = b"q" * 64
GRPC_RESPONSE_TEXT = b"a" * 64
GRPC_TRAILER = ("x-bench-origin", "nginx")
"""A trailer of our own next to grpc-status: a client sees it only if the proxy relayed
trailers (grpcio consumes grpc-status itself)."""
GRPC_REQUEST_FILE = "grpc-request.bin"
GRPC_H2LOAD_HEADERS = ("-H", "content-type: application/grpc", "-H", "te: trailers")


class Skip(Exception):
    """This peer cannot run this protocol here; the reason goes into the results."""


@dataclass
class Running:
    name: str
    port: int
    proc: Proc | None
    pids: list[int] = field(default_factory=list)
    """The process tree whose CPU and memory are measured (empty for `direct`)."""
    path: str = BODY_PATH
    """What the HTTP/1.1 load generators request (with `headers`, each `Name: value`)."""
    headers: tuple[str, ...] = ()


def grpc_message(text: bytes) -> bytes:
    """A length-prefixed gRPC message holding `message Echo { string text = 1; }`."""
    assert len(text) < 128  # one-byte varint length
    payload = b"\x0a" + bytes([len(text)]) + text
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def _nginx_temp_paths(tmp: Path, tag: str) -> str:
    base = tmp / f"{tag}-temp"
    base.mkdir(exist_ok=True)
    return "\n".join(f"  {k}_temp_path {base}/{k};" for k in
                     ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))


# -- origin ---------------------------------------------------------------------------------


def origin_config(tmp: Path, port: int, host: str = "127.0.0.1") -> str:
    www = tmp / "www"
    www.mkdir(exist_ok=True)
    (www / BODY_PATH.lstrip("/")).write_bytes(b"x" * (BODY_SIZE - 1) + b"\n")
    return f"""# Origin for the Tulle benchmark: a static 1 KiB file, keep-alive, one worker.
worker_processes 1;
daemon off;
pid {tmp}/origin.pid;
error_log {tmp}/origin-error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
{_nginx_temp_paths(tmp, "origin")}
  default_type application/octet-stream;
  sendfile on;
  etag off;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  open_file_cache max=16;
  server {{
    listen {host}:{port} backlog=4096;
    root {www};
  }}
}}
"""


def start_origin(ps: ProcessSet) -> Running:
    port = free_port()
    conf = ps.tmp / "origin.conf"
    conf.write_text(origin_config(ps.tmp, port))
    proc = ps.start("origin", ["nginx", "-p", str(ps.tmp), "-c", str(conf)], cpu=LOAD_CPU)
    wait_port(port, proc)
    status, body = http_get(port, BODY_PATH)
    if status != 200 or len(body) != BODY_SIZE:
        raise RuntimeError(f"origin answered {status} with {len(body)} bytes")
    return Running("origin", port, proc, _with_workers(proc))


def grpc_origin_config(tmp: Path, port: int) -> str:
    www = tmp / "www-grpc"
    (www / GRPC_PATH.strip("/").split("/")[0]).mkdir(parents=True, exist_ok=True)
    (www / GRPC_PATH.lstrip("/")).write_bytes(grpc_message(GRPC_RESPONSE_TEXT))
    name, value = GRPC_TRAILER
    # The static module refuses POST with 405; `error_page 405 =200 $uri` serves the file to it
    # instead (the internal redirect turns the method into GET).  Trailers need HTTP/2.  The
    # mirror only makes nginx read the whole request before answering, as a gRPC server does:
    # answering first ends the stream with RST_STREAM(NO_ERROR), which nginx's own grpc_pass
    # then takes for a frame on an unknown stream and drops the connection's next call.
    return f"""# gRPC origin for the Tulle benchmark: one unary method, a static reply, h2c, one worker.
worker_processes 1;
daemon off;
pid {tmp}/grpc-origin.pid;
error_log {tmp}/grpc-origin-error.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
{_nginx_temp_paths(tmp, "grpc-origin")}
  etag off;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  open_file_cache max=16;
  server {{
    listen 127.0.0.1:{port} http2 backlog=4096;
    root {www};
    location = {GRPC_PATH} {{
      types {{ }}
      default_type application/grpc;
      mirror /drain;
      mirror_request_body on;
      error_page 405 =200 $uri;
      add_trailer grpc-status 0 always;
      add_trailer {name} {value} always;
    }}
    location = /drain {{ internal; return 204; }}
  }}
}}
"""


def start_grpc_origin(ps: ProcessSet) -> Running:
    """The gRPC origin, checked with h2load and grpcio; returned as the `direct` target."""
    (ps.tmp / GRPC_REQUEST_FILE).write_bytes(grpc_message(GRPC_REQUEST_TEXT))
    port = free_port()
    conf = ps.tmp / "grpc-origin.conf"
    conf.write_text(grpc_origin_config(ps.tmp, port))
    proc = ps.start("grpc-origin", ["nginx", "-p", str(ps.tmp), "-c", str(conf)], cpu=LOAD_CPU)
    wait_port(port, proc)
    _with_workers(proc)
    direct = Running("direct", port, proc)  # no pids: no proxy CPU or memory to measure
    check_grpc(direct, ps.tmp)
    return direct


# -- Tulle ----------------------------------------------------------------------------------


HEADER_FILTERS = [
    {"type": "RequestHeaderModifier", "set": [{"name": "x-env", "value": "prod"}],
     "remove": ["x-debug"]},
    {"type": "ResponseHeaderModifier", "add": [{"name": "x-served-by", "value": "tulle"}],
     "remove": ["server"]},
]
"""The `tulle-filters` peer's route: a request and a response header modifier, issue 7's
"two header modifiers cost at most +10% CPU per request" case (as in `bench.micro_http1`)."""


RETRY = {"num_retries": 2, "retry_on": ["5xx", "connect-failure", "refused-stream"]}
"""The `tulle-retry` peer's route: retries on, with the cluster's default budget (20% + 10/s),
on a healthy origin: what retries and their budget cost when nothing fails (issue 10: < 3%)."""


def tulle_config(port: int, admin_port: int, origin_port: int, protocol: str,
                 filters: bool = False, retry: bool = False) -> dict[str, object]:
    listener: dict[str, object] = {"name": "bench", "address": "127.0.0.1", "port": port}
    cluster: dict[str, object] = {
        "name": "origin", "protocol": "http1", "max_idle_per_endpoint": 1024,
        "endpoints": [{"address": "127.0.0.1", "port": origin_port}]}
    rule: dict[str, object] = {"backends": [{"cluster": "origin"}]}
    if filters:
        rule["filters"] = HEADER_FILTERS
    if retry:
        rule["retry"] = RETRY
    if protocol == "tcp":
        listener.update(protocol="tcp", cluster="origin")
        cluster["protocol"] = "tcp"
    elif protocol == "grpc":
        listener.update(protocol="http2", route_table="rt")
        cluster["protocol"] = "http2"
        rule["timeout_ms"] = 0  # as for gRPC streams (docs/reference/http2.md)
    else:
        listener.update(protocol="http2" if protocol == "h2c" else "http1", route_table="rt")
    return {
        "version": "bench",
        "node": {"name": "bench"},
        "admin": {"address": "127.0.0.1", "port": admin_port},
        "settings": {"workers": 1},
        "listeners": [listener],
        "clusters": [cluster],
        "route_tables": [{"name": "rt", "virtual_hosts": [
            {"name": "any", "domains": ["*"], "rules": [rule]}]}],
    }


def tulle_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("tulle")
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "tulle.cli.main"]


def start_tulle(ps: ProcessSet, origin_port: int, protocol: str,
                filters: bool = False, retry: bool = False) -> Running:
    port, admin = free_port(), free_port()
    name = "tulle-filters" if filters else "tulle-retry" if retry else "tulle"
    conf = ps.tmp / f"{name}-{protocol}.json"
    conf.write_text(json.dumps(tulle_config(port, admin, origin_port, protocol, filters, retry),
                               indent=2))
    proc = ps.start(f"{name}-{protocol}", [*tulle_cmd(), "proxy", "run", "--config", str(conf),
                                          "--watch-interval", "0", "--log-level", "warning"],
                    cpu=PROXY_CPU)
    try:
        wait_port(port, proc)
    except RuntimeError as exc:
        ps.stop(proc)
        if protocol != "http1":
            raise Skip(f"tulle cannot serve {protocol} yet: {exc}") from exc
        raise
    return Running(name, port, proc, tree(proc.pid))


def start_tulle_filters(ps: ProcessSet, origin_port: int, protocol: str) -> Running:
    """Tulle with the two header modifiers on its route; HTTP/1.1 rounds only."""
    if protocol != "http1":
        raise Skip("the filter cost is measured on HTTP/1.1 only")
    return start_tulle(ps, origin_port, protocol, filters=True)


def start_tulle_retry(ps: ProcessSet, origin_port: int, protocol: str) -> Running:
    """Tulle with retries (and so the retry budget) on its route; HTTP/1.1 rounds only."""
    if protocol != "http1":
        raise Skip("the retry budget's cost is measured on HTTP/1.1 only")
    return start_tulle(ps, origin_port, protocol, retry=True)


# -- HAProxy --------------------------------------------------------------------------------


def haproxy_config(tmp: Path, port: int, stats_port: int, origin_port: int, protocol: str) -> str:
    mode = "tcp" if protocol == "tcp" else "http"
    bind_opts = " proto h2" if protocol in ("h2c", "grpc") else ""
    server_opts = " proto h2" if protocol == "grpc" else ""
    http_only = "  http-reuse always\n" if mode == "http" else ""
    return f"""# HAProxy peer for the Tulle benchmark ({protocol}): one thread, no logging.
global
  nbthread 1
  maxconn 4000
  pidfile {tmp}/haproxy-{protocol}.pid

defaults
  mode {mode}
  timeout connect 1s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s

frontend bench
  bind 127.0.0.1:{port}{bind_opts}
  default_backend origin

backend origin
{http_only}  server o1 127.0.0.1:{origin_port}{server_opts}

frontend stats
  mode http
  bind 127.0.0.1:{stats_port}
  stats enable
  stats uri /stats
"""


def start_haproxy(ps: ProcessSet, origin_port: int, protocol: str) -> Running:
    port, stats = free_port(), free_port()
    conf = ps.tmp / f"haproxy-{protocol}.cfg"
    conf.write_text(haproxy_config(ps.tmp, port, stats, origin_port, protocol))
    proc = ps.start(f"haproxy-{protocol}", ["haproxy", "-db", "-f", str(conf)], cpu=PROXY_CPU)
    wait_port(port, proc)
    return Running("haproxy", port, proc, tree(proc.pid))


# -- nginx ----------------------------------------------------------------------------------


def nginx_config(tmp: Path, port: int, origin_port: int, protocol: str) -> str:
    head = f"""# nginx peer for the Tulle benchmark ({protocol}): one worker, no access log.
worker_processes 1;
daemon off;
pid {tmp}/nginx-{protocol}.pid;
error_log {tmp}/nginx-{protocol}-error.log warn;
"""
    if protocol == "tcp":
        return head + f"""load_module {NGINX_STREAM_MODULE};
events {{ worker_connections 16384; }}
stream {{
  upstream origin {{ server 127.0.0.1:{origin_port}; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    proxy_pass origin;
  }}
}}
"""
    listen_opts = " http2" if protocol in ("h2c", "grpc") else ""
    if protocol == "grpc":
        location = """
      grpc_pass grpc://origin;"""
    else:
        location = """
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";"""
    return head + f"""events {{ worker_connections 16384; }}
http {{
  access_log off;
{_nginx_temp_paths(tmp, f"nginx-{protocol}")}
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  upstream origin {{
    server 127.0.0.1:{origin_port};
    keepalive 256;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
  }}
  server {{
    listen 127.0.0.1:{port}{listen_opts} backlog=4096;
    location / {{{location}
    }}
    location = /nginx_status {{ stub_status; }}
  }}
}}
"""


def start_nginx(ps: ProcessSet, origin_port: int, protocol: str) -> Running:
    if protocol == "tcp" and not NGINX_STREAM_MODULE.exists():
        raise Skip(f"nginx has no stream module here ({NGINX_STREAM_MODULE} is missing; "
                   "Debian's nginx-light does not ship it, libnginx-mod-stream does)")
    port = free_port()
    conf = ps.tmp / f"nginx-{protocol}.conf"
    conf.write_text(nginx_config(ps.tmp, port, origin_port, protocol))
    proc = ps.start(f"nginx-{protocol}", ["nginx", "-p", str(ps.tmp), "-c", str(conf)],
                    cpu=PROXY_CPU)
    wait_port(port, proc)
    return Running("nginx", port, proc, _with_workers(proc))


def _with_workers(proc: Proc, timeout: float = 5.0) -> list[int]:
    """nginx's master listens before it forks its worker: wait for the worker to exist."""
    deadline = time.monotonic() + timeout
    pids = tree(proc.pid)
    while len(pids) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
        pids = tree(proc.pid)
    if len(pids) < 2:
        raise RuntimeError(f"{proc.name}: no worker process after {timeout}s: {proc.tail()}")
    return pids


def start_relay(ps: ProcessSet, origin_port: int, protocol: str = "http1") -> Running:
    """`bench/relay.py`: a minimal uvloop + httptools relay, the floor of a Python proxy
    (issue 13); HTTP/1.1 rounds only."""
    if protocol != "http1":
        raise Skip("the relay floor is an HTTP/1.1 proxy")
    port = free_port()
    proc = ps.start("relay", [sys.executable, str(Path(__file__).with_name("relay.py")),
                              "--port", str(port), "--origin-port", str(origin_port)],
                    cpu=PROXY_CPU)
    wait_port(port, proc)
    return Running("relay", port, proc, tree(proc.pid))


STARTERS = {"tulle": start_tulle, "tulle-filters": start_tulle_filters,
            "tulle-retry": start_tulle_retry,
            "haproxy": start_haproxy, "nginx": start_nginx, "relay": start_relay}


def check_http(r: Running) -> None:
    """A proxy that answers anything but the origin's 1 KiB body is not benchmarked; the
    filtered Tulle must also show its response header edits."""
    status, head, body = http_get_full(r.port, r.path, headers=r.headers)
    if status != 200 or len(body) != BODY_SIZE:
        raise RuntimeError(f"{r.name} answered {status} with {len(body)} bytes")
    if r.name == "tulle-filters":
        lines = head.lower().split(b"\r\n")
        if b"x-served-by: tulle" not in lines or any(x.startswith(b"server:") for x in lines):
            raise RuntimeError(f"{r.name}: the response header modifier did not run: {head!r}")


def check_h2c(r: Running) -> None:
    try:
        out = subprocess.run(["h2load", "-n", "4", "-c", "1", f"http://127.0.0.1:{r.port}{BODY_PATH}"],
                             capture_output=True, text=True, timeout=10, check=False)
    except subprocess.TimeoutExpired as exc:
        raise Skip(f"{r.name} h2c sanity check (4 requests) got no answers within 10 s") from exc
    if "4 succeeded" not in out.stdout:
        raise Skip(f"{r.name} h2c sanity check failed: "
                   f"{(out.stdout + out.stderr).strip().splitlines()[-3:]}")


def check_grpc(r: Running, tmp: Path) -> None:
    """4 gRPC-shaped POSTs from h2load must get 2xx; then one call from a real gRPC client
    (grpcio, in a child process so that the runner never forks with gRPC's threads) must end
    with status OK, the origin's reply byte for byte, and the origin's own trailer relayed."""
    req = tmp / GRPC_REQUEST_FILE
    try:
        out = subprocess.run(["h2load", "-n", "4", "-c", "1", "-d", str(req), *GRPC_H2LOAD_HEADERS,
                              f"http://127.0.0.1:{r.port}{GRPC_PATH}"],
                             capture_output=True, text=True, timeout=10, check=False)
    except subprocess.TimeoutExpired as exc:
        raise Skip(f"{r.name} gRPC sanity check (4 requests) got no answers within 10 s") from exc
    if "4 succeeded" not in out.stdout or "4 2xx" not in out.stdout:
        raise Skip(f"{r.name} gRPC sanity check failed: "
                   f"{(out.stdout + out.stderr).strip().splitlines()[-3:]}")
    want = {"code": "StatusCode.OK", "reply": grpc_message(GRPC_RESPONSE_TEXT)[5:].hex(),
            "trailer": GRPC_TRAILER[1]}
    try:
        got = subprocess.run([sys.executable, "-c", _GRPC_CLIENT, str(r.port), GRPC_PATH,
                              GRPC_REQUEST_TEXT.decode(), GRPC_TRAILER[0]],
                             capture_output=True, text=True, timeout=20, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{r.name}: the grpcio check did not finish within 20 s") from exc
    try:
        seen = json.loads(got.stdout)
    except ValueError as exc:
        raise RuntimeError(f"{r.name}: grpcio check failed: {got.stderr.strip()[-500:]}") from exc
    if seen != want:
        raise RuntimeError(f"{r.name}: grpcio saw {seen}, expected {want}")


_GRPC_CLIENT = """
import json, sys, grpc
port, path, text, trailer = sys.argv[1:5]
request = b"\\x0a" + bytes([len(text)]) + text.encode()
with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
    try:
        reply, call = ch.unary_unary(path).with_call(request, timeout=5)
        code, md = call.code(), dict(call.trailing_metadata() or ())
    except grpc.RpcError as e:
        reply, code, md = b"", e.code(), {"details": e.details()}
print(json.dumps({"code": str(code), "reply": reply.hex(), "trailer": md.get(trailer)}))
"""


def versions() -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=False)
        except OSError:
            return "missing"
        return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr) else ""

    return {"haproxy": first_line(["haproxy", "-v"]), "nginx": first_line(["nginx", "-v"]),
            "wrk": first_line(["wrk", "--version"]).split(" Copyright")[0],
            "h2load": first_line(["h2load", "--version"]),
            "python": sys.version.split()[0], "kernel": os.uname().release}
