"""The traffic the compiled group's profile-guided build learns from (ADR 0083).

`scripts/build_native.py` builds the group with `-fprofile-generate`, runs `train()` through
two proxies started from that build, and builds again with `-fprofile-use`.  gcc then
optimises the functions the workload ran for speed and lays them out together, and moves
the functions it never ran to `.text.unlikely`, optimised for size.  A proxy that never calls
those never maps their pages, and the code it does run shares fewer pages and cache lines.

What a function that is not run here loses is speed, so the workload goes through every
path a proxy takes in ordinary service, each protocol of the compiled group included:

* HTTP/1.1 keep-alive GET and POST (Content-Length and chunked bodies) and a connection per
  request (`Connection: close`), on a route with header filters and retries, upstream in
  plaintext and over mesh mTLS to a second proxy; some 503s from the origin, retried;
  telemetry on in both proxies (golden metrics, a JSON access log, tracing at 50 % so both
  branches run);
* h2c to an HTTP/1.1 origin, gRPC unary calls to a gRPC origin (grpcio), opaque TCP;
* an `auto` listener sniffing HTTP/1.1, h2c with prior knowledge and a binary protocol.

Everything listens on 127.0.0.1 and every wait is bounded; the proxies are stopped with
SIGTERM, so they drain and exit normally (the profile is written at exit).

    .venv/bin/python scripts/native_training.py [--seconds 4]

prints what completed of each kind and exits 1 when a kind completed nothing (a profile
without that path would slow it down).  The build runs it with the instrumented group on
`PYTHONPATH`; the build runs this process itself with `TULLE_PURE=1`, so only the proxies
(started without it) load the group and write profile data.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _path in (str(ROOT / "src"), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

BODY = b"x" * 1024
KINDS = ("http1", "http1-mtls", "http1-chunked", "http1-retried", "http1-close", "h2c", "grpc",
         "tcp", "auto-http1", "auto-h2c", "auto-tcp")
"""What `train` reports; each must complete at least once."""


def free_port() -> int:
    """A free port on 127.0.0.1, picked as the benchmark and the tests pick theirs
    (`tulle.net.ports.unused_port`: not port 0's pick, see there)."""
    from tulle.net.ports import unused_port

    return unused_port()


# -- origins (in this process, on their own event loop or thread pool) --------------------

class Origin(asyncio.Protocol):
    """An HTTP/1.1 keep-alive origin: 200 with 1 KiB (chunked for `/chunked`), 503 for
    `/fail`, a request body (Content-Length or chunked) read and dropped."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").split("\r\n")
            fields = {k.strip().lower(): v.strip()
                      for k, _, v in (line.partition(":") for line in head[1:])}
            rest = self.buf[end + 4:]
            if fields.get("transfer-encoding", "").lower() == "chunked":
                tail = rest.find(b"0\r\n\r\n")
                if tail < 0:
                    return
                rest = rest[tail + 5:]
            else:
                length = int(fields.get("content-length", "0"))
                if len(rest) < length:
                    return
                rest = rest[length:]
            self.buf = rest
            path = head[0].split(" ")[1] if head[0].count(" ") >= 2 else "/"
            if path.startswith("/fail"):
                self.transport.write(b"HTTP/1.1 503 Service Unavailable\r\n"
                                     b"Content-Length: 4\r\n\r\nbusy")
            elif path.startswith("/chunked"):
                self.transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                     b"400\r\n" + BODY + b"\r\n0\r\n\r\n")
            else:
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                     b"Content-Length: 1024\r\n\r\n" + BODY)


class Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class Origins:
    """The HTTP/1.1 and echo origins on a loop in a thread, and a grpcio server."""

    def __init__(self) -> None:
        import grpc

        self.http, self.echo = free_port(), free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        if not ready.wait(10):
            raise RuntimeError("the origins did not start")
        self.grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_unary_rpc_method_handler(lambda request, context: request)
        self.grpc_server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("train.Echo", {"Echo": handler}),))
        self.grpc = self.grpc_server.add_insecure_port("127.0.0.1:0")
        self.grpc_server.start()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.loop.create_server(Origin, "127.0.0.1", self.http))
        self.loop.run_until_complete(self.loop.create_server(Echo, "127.0.0.1", self.echo))
        ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        self.grpc_server.stop(0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# -- the two proxies -----------------------------------------------------------------------

def telemetry(tmp: Path, name: str) -> dict[str, Any]:
    """A `telemetry` section as the compiler makes it of a Mesh's observability."""
    from bench.telemetry_peers import telemetry_section

    return telemetry_section({
        "metrics": {"enabled": True},
        "accessLog": {"sink": {"type": "file", "path": str(tmp / f"{name}-access.log")}},
        "tracing": {"sampling": 50},
    })


def proxy_configs(tmp: Path, o: Origins, ports: dict[str, int]) -> tuple[dict[str, Any], ...]:
    """The front proxy (every listener kind) and the inbound proxy behind mesh mTLS; the
    routes' filters and retries are the benchmark's (`bench.peers`)."""
    from bench import mtls_peers
    from bench.peers import HEADER_FILTERS, RETRY

    inbound = mtls_peers.tulle_server_config(ports["inbound"], ports["inbound-admin"], o.http,
                                             mtls=True)
    inbound["telemetry"] = telemetry(tmp, "inbound")
    inbound["node"] = {"name": "bench-0", "namespace": "bench"}
    front = mtls_peers.tulle_client_config(ports["http"], ports["front-admin"],
                                           ports["inbound"], mtls=True)
    front["telemetry"] = telemetry(tmp, "front")
    front["node"] = {"name": "bench-0", "namespace": "bench"}

    def cluster(name: str, protocol: str, port: int) -> dict[str, Any]:
        return {"name": name, "protocol": protocol, "max_idle_per_endpoint": 64,
                "endpoints": [{"address": "127.0.0.1", "port": port}]}

    def rule(prefix: str, target: str, **extra: Any) -> dict[str, Any]:
        return {"matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                "backends": [{"cluster": target}], **extra}

    front["clusters"] = [*_listed(front["clusters"]), cluster("origin", "http1", o.http),
                         cluster("echo", "tcp", o.echo), cluster("grpc", "http2", o.grpc)]
    front["route_tables"] = [
        {"name": "rt", "virtual_hosts": [{"name": "any", "domains": ["*"], "rules": [
            rule("/direct", "origin", filters=HEADER_FILTERS, retry=RETRY),
            rule("/fail", "origin", retry=RETRY),
            rule("/chunked", "origin", filters=HEADER_FILTERS),
            rule("/", "mesh", filters=HEADER_FILTERS, retry=RETRY)]}]},
        {"name": "grpc", "virtual_hosts": [{"name": "any", "domains": ["*"], "rules": [
            {"backends": [{"cluster": "grpc"}], "timeout_ms": 0}]}]},
    ]
    front["listeners"] = [
        *_listed(front["listeners"]),
        {"name": "h2c", "address": "127.0.0.1", "port": ports["h2c"], "protocol": "http2",
         "route_table": "rt"},
        {"name": "grpc", "address": "127.0.0.1", "port": ports["grpc"], "protocol": "http2",
         "route_table": "grpc"},
        {"name": "tcp", "address": "127.0.0.1", "port": ports["tcp"], "protocol": "tcp",
         "cluster": "echo"},
        {"name": "auto", "address": "127.0.0.1", "port": ports["auto"], "protocol": "auto",
         "route_table": "rt", "cluster": "echo"},
    ]
    return front, inbound


def _listed(value: object) -> list[Any]:
    assert isinstance(value, list)
    return value


class Proxies:
    """`tulle proxy run` of each config, from the checkout this script belongs to, with the
    compiled group (TULLE_PURE unset)."""

    def __init__(self, tmp: Path, configs: tuple[dict[str, Any], ...],
                 ports: list[int]) -> None:
        env = {k: v for k, v in os.environ.items() if k != "TULLE_PURE"}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"),
                                             *filter(None, [env.get("PYTHONPATH")])])
        self.procs: list[subprocess.Popen[bytes]] = []
        for i, cfg in enumerate(configs):
            path = tmp / f"proxy-{i}.json"
            path.write_text(json.dumps(cfg))
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "tulle.cli.main", "proxy", "run", "--config", str(path),
                 "--watch-interval", "0", "--log-level", "warning"],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))
        deadline = time.monotonic() + 30
        for port in ports:
            while not _accepts(port):
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    self.stop()
                    raise RuntimeError(f"a training proxy did not open port {port}")
                time.sleep(0.05)
        if any(p.poll() is not None for p in self.procs):  # another process has its port
            self.stop()
            raise RuntimeError("a training proxy exited on start")

    def stop(self) -> list[int | None]:
        """SIGTERM (drain, exit 0, profile written); SIGKILL only past 20 s."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        for p in self.procs:
            try:
                codes.append(p.wait(20))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
                codes.append(None)
        return codes


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


# -- clients ------------------------------------------------------------------------------

def http1_client(port: int, until: float, done: Counter[str], kinds: list[tuple[str, bytes]],
                 ) -> None:
    """Keep-alive requests on one connection, cycling through `kinds` until `until`."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rb")
        i = 0
        while time.monotonic() < until:
            kind, request = kinds[i % len(kinds)]
            i += 1
            s.sendall(request)
            status = f.readline().split(b" ")[1]
            length, chunked = 0, False
            while (line := f.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
                elif name.lower() == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
            if chunked:
                while (size := int(f.readline().split(b";")[0], 16)) > 0:
                    f.read(size + 2)
                f.readline()
            else:
                f.read(length)
            # /fail answers 503 once its retries are spent; every other kind must answer 2xx
            # (a 503 from a path that broke, the mesh's mTLS say, is not that path run)
            if (status == b"503") if kind == "http1-retried" else (status[:1] == b"2"):
                done[kind] += 1


def http1_close_client(port: int, until: float, done: Counter[str]) -> None:
    """A new connection per request (`Connection: close`): accept, set-up and close paths."""
    request = b"GET /direct HTTP/1.1\r\nHost: train\r\nConnection: close\r\n\r\n"
    while time.monotonic() < until:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(request)
            got = b""
            while chunk := s.recv(65536):
                got += chunk
            if got.startswith(b"HTTP/1.1 200"):
                done["http1-close"] += 1


def http1_requests(prefix: str) -> list[tuple[str, bytes]]:
    host = b"Host: train\r\n"
    post = (b"POST %s HTTP/1.1\r\n" % prefix.encode() + host
            + b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n\r\n" + BODY)
    chunked_post = (b"POST /chunked HTTP/1.1\r\n" + host
                    + b"Transfer-Encoding: chunked\r\n\r\n400\r\n" + BODY + b"\r\n0\r\n\r\n")
    get = b"GET %s HTTP/1.1\r\n" % prefix.encode() + host + b"Accept: */*\r\n\r\n"
    kind = "http1" if prefix == "/direct" else "http1-mtls"
    return [(kind, get), (kind, post), (kind, get), ("http1-chunked", chunked_post),
            (kind, get), ("http1-retried", b"GET /fail HTTP/1.1\r\n" + host + b"\r\n")]


def h2c_client(port: int, until: float, done: Counter[str], kind: str) -> None:
    """Prior-knowledge h2c with the `h2` library: GETs and POSTs, four streams at a time."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    ok: set[int] = set()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        conn.initiate_connection()
        s.sendall(conn.data_to_send())
        while time.monotonic() < until:
            streams = set()
            for j in range(4):
                sid = conn.get_next_available_stream_id()
                post = j % 2 == 1
                conn.send_headers(sid, [(":method", "POST" if post else "GET"), (":path", "/direct"),
                                        (":scheme", "http"), (":authority", "train")],
                                  end_stream=not post)
                if post:
                    conn.send_data(sid, BODY, end_stream=True)
                streams.add(sid)
            s.sendall(conn.data_to_send())
            while streams:
                if time.monotonic() > until + 10:  # frames keep coming, the streams never end
                    raise RuntimeError(f"{kind}: streams {sorted(streams)} never ended")
                data = s.recv(65536)
                if not data:
                    return
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        if dict(event.headers).get(b":status", b"")[:1] == b"2":
                            ok.add(event.stream_id)
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length,
                                                       event.stream_id)
                    elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                        streams.discard(event.stream_id)
                        if isinstance(event, h2.events.StreamEnded) and event.stream_id in ok:
                            done[kind] += 1
                s.sendall(conn.data_to_send())
        conn.close_connection()
        s.sendall(conn.data_to_send())


def grpc_client(port: int, until: float, done: Counter[str]) -> None:
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/train.Echo/Echo")
        while time.monotonic() < until:
            if call(b"\x08\x01" + BODY[:200], timeout=5) == b"\x08\x01" + BODY[:200]:
                done["grpc"] += 1


def tcp_client(port: int, until: float, done: Counter[str], kind: str) -> None:
    """Short connections, each a few echoed messages; binary first bytes (not HTTP)."""
    while time.monotonic() < until:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            for _ in range(3):
                s.sendall(b"\x00\x01binary" + BODY[:100])
                got = b""
                while len(got) < 108:
                    chunk = s.recv(4096)
                    if not chunk:
                        return
                    got += chunk
            done[kind] += 1


# -- the run ------------------------------------------------------------------------------

def train(seconds: float = 4.0) -> Counter[str]:
    """Run the workload for about `seconds`; what completed, by kind."""
    done: Counter[str] = Counter()
    origins = Origins()
    try:
        with tempfile.TemporaryDirectory(prefix="tulle-train-") as name:
            tmp = Path(name)
            ports = {k: free_port() for k in ("http", "h2c", "grpc", "tcp", "auto", "inbound",
                                              "front-admin", "inbound-admin")}
            proxies = Proxies(tmp, proxy_configs(tmp, origins, ports),
                              [ports[k] for k in ("http", "h2c", "grpc", "tcp", "auto",
                                                  "inbound")])
            try:
                until = time.monotonic() + seconds
                jobs: list[tuple[Callable[..., None], tuple[Any, ...]]] = [
                    (http1_client, (ports["http"], until, done, http1_requests("/direct"))),
                    (http1_client, (ports["http"], until, done, http1_requests("/direct"))),
                    (http1_client, (ports["http"], until, done, http1_requests("/mesh"))),
                    (http1_close_client, (ports["http"], until, done)),
                    (http1_client, (ports["auto"], until, done,
                                    [("auto-http1", b"GET /direct HTTP/1.1\r\nHost: t\r\n\r\n")])),
                    (h2c_client, (ports["h2c"], until, done, "h2c")),
                    (h2c_client, (ports["auto"], until, done, "auto-h2c")),
                    (grpc_client, (ports["grpc"], until, done)),
                    (tcp_client, (ports["tcp"], until, done, "tcp")),
                    (tcp_client, (ports["auto"], until, done, "auto-tcp")),
                ]
                with futures.ThreadPoolExecutor(len(jobs)) as pool:
                    for f in [pool.submit(fn, *args) for fn, args in jobs]:
                        f.result(timeout=seconds + 30)
            finally:
                codes = proxies.stop()
            if any(c != 0 for c in codes):
                raise RuntimeError(f"the training proxies exited {codes} (the profile is "
                                   f"written by a normal exit)")
    finally:
        origins.close()
    return done


def missing(done: Counter[str]) -> list[str]:
    """The kinds of traffic that completed nothing."""
    return [k for k in KINDS if not done[k]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args(argv)
    # The build ends a training run that overran with SIGTERM to its process group: stop the
    # proxies and remove the temporary directory on the way out, as on every other path.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    done = train(args.seconds)
    print("tulle native training: " + ", ".join(f"{k} {done[k]}" for k in KINDS))
    if gone := missing(done):
        print(f"tulle native training: nothing completed for {', '.join(gone)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
