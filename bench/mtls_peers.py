"""The mTLS row (issue 9): two proxy hops, over mesh mTLS, over plaintext, and HAProxy's two
TLS hops, measured in the same HTTP/1.1 rounds as the one-hop peers.

    load generator -> [hop 1: client proxy] ==(mTLS | plaintext)==> [hop 2: server proxy] -> origin

- `tulle-mtls`: Tulle's mesh mTLS as the data plane runs it (ADR 0030): the client proxy's
  cluster presents an SVID (`identities` section), verifies the server against a trust bundle
  and checks its SPIFFE ID, TLS 1.3, ALPN http/1.1; the server proxy terminates on a filter
  chain matching `transport: tls` that requires a client certificate from the bundle.
- `tulle-2hop`: the same two Tulle proxies with plaintext between them.
- `haproxy-tls`: two HAProxy processes, the first re-encrypting to the second (`ssl verify
  required`, client certificate, TLS 1.3), the second terminating (`verify required`).  HAProxy
  checks the chain, not the SPIFFE ID (it has no URI SAN check): it does a little less work.

Both hops of a pair run on the proxy CPU and their CPU is summed: `cpu_us_per_req` is what the
mesh costs per request over two sidecars.  Certificates (ECDSA P-256, as DESIGN.md decision 7)
are made here with `cryptography`, written to the run's temp dir for HAProxy and passed inline
to Tulle as sections.  Each pair is checked (the origin's 1 KiB body through both hops) before
it is measured, like every peer.

`measure_handshakes` adds the figure no steady-state round shows: new mTLS connections per
second per core of the server proxy (`handshakes_per_s`): each is a full TLS 1.3 handshake with
a client certificate (no resumption) and one request on it, divided by the server proxy's CPU
seconds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.peers import PROXY_CPU, Running, tulle_cmd
from bench.procs import Proc, ProcessSet, free_port, rss_bytes, tree, wait_port

TRUST_DOMAIN = "bench.local"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/client"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/bench/sa/server"


@dataclass(frozen=True)
class Certs:
    ca: str
    client: tuple[str, str]
    server: tuple[str, str]
    """(certificate PEM, key PEM)."""

    def write(self, tmp: Path) -> dict[str, Path]:
        """Files for HAProxy (`crt` wants certificate and key in one file)."""
        paths = {"ca": tmp / "mtls-ca.pem", "client": tmp / "mtls-client.pem",
                 "server": tmp / "mtls-server.pem"}
        paths["ca"].write_text(self.ca)
        paths["client"].write_text("".join(self.client))
        paths["server"].write_text("".join(self.server))
        for p in paths.values():
            p.chmod(0o600)
        return paths


def make_certs() -> Certs:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tulle bench root")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def svid(spiffe_id: str) -> tuple[str, str]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(spiffe_id)]), critical=True)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(ca_key, hashes.SHA256()))
        return (cert.public_bytes(serialization.Encoding.PEM).decode(),
                key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode())

    return Certs(ca.public_bytes(serialization.Encoding.PEM).decode(), svid(CLIENT_ID),
                 svid(SERVER_ID))


_CERTS: Certs | None = None


def certs() -> Certs:
    """One CA and pair of SVIDs per run (made on first use: `cryptography` costs an import)."""
    global _CERTS
    if _CERTS is None:
        _CERTS = make_certs()
    return _CERTS


MTLS = {"identity": "workload", "trust_bundle": "mesh", "min_version": "1.3"}


def _sections(pair: tuple[str, str]) -> dict[str, object]:
    return {"identities": [{"name": "workload", "cert_chain_pem": pair[0],
                            "private_key_pem": pair[1]}],
            "trust_bundles": [{"name": "mesh", "ca_pems": [certs().ca]}]}


def _base(admin: int) -> dict[str, object]:
    return {"version": "bench", "node": {"name": "bench"},
            "admin": {"address": "127.0.0.1", "port": admin}, "settings": {"workers": 1}}


def _route(cluster: str) -> list[dict[str, object]]:
    return [{"name": "rt", "virtual_hosts": [{"name": "any", "domains": ["*"], "rules": [
        {"backends": [{"cluster": cluster}]}]}]}]


def tulle_client_config(port: int, admin: int, server_port: int,
                        mtls: bool) -> dict[str, object]:
    cluster: dict[str, object] = {
        "name": "mesh", "protocol": "http1", "max_idle_per_endpoint": 1024,
        "endpoints": [{"address": "127.0.0.1", "port": server_port}]}
    cfg = {**_base(admin),
           "listeners": [{"name": "bench", "address": "127.0.0.1", "port": port,
                          "protocol": "http1", "route_table": "rt"}],
           "clusters": [cluster], "route_tables": _route("mesh")}
    if mtls:
        cluster["tls"] = {**MTLS, "expected_spiffe_ids": [SERVER_ID]}
        cfg.update(_sections(certs().client))
    return cfg


def tulle_server_config(port: int, admin: int, origin_port: int,
                        mtls: bool) -> dict[str, object]:
    listener: dict[str, object] = {"name": "inbound", "address": "127.0.0.1", "port": port,
                                   "direction": "inbound"}
    if mtls:  # STRICT: one chain, TLS only
        listener["filter_chains"] = [{"name": "mtls", "match": {"transport": "tls"},
                                      "tls": MTLS, "route_table": "rt"}]
    else:
        listener.update(protocol="http1", route_table="rt")
    cfg = {**_base(admin), "listeners": [listener],
           "clusters": [{"name": "app", "protocol": "http1", "max_idle_per_endpoint": 1024,
                         "endpoints": [{"address": "127.0.0.1", "port": origin_port}]}],
           "route_tables": _route("app")}
    if mtls:
        cfg.update(_sections(certs().server))
    return cfg


@dataclass
class Hop2:
    """The second hop of a pair: what `measure_handshakes` dials; `procs` are both hops'
    processes (stopped with `stop_pair` once the row is measured)."""

    port: int
    pids: list[int]
    procs: list[Proc]
    hop_pids: list[list[int]]
    """Each hop's process tree, for its own RSS."""


SECOND_HOPS: dict[str, Hop2] = {}
"""Peer name -> its server-side proxy, for the handshake measurement."""


def _start_tulle(ps: ProcessSet, name: str, cfg: dict[str, object], port: int) -> Proc:
    conf = ps.tmp / f"{name}.json"
    conf.write_text(json.dumps(cfg, indent=2))
    conf.chmod(0o600)  # holds a private key
    proc = ps.start(name, [*tulle_cmd(), "proxy", "run", "--config", str(conf),
                           "--watch-interval", "0", "--log-level", "warning"], cpu=PROXY_CPU)
    wait_port(port, proc)
    return proc


def _tulle_pair(ps: ProcessSet, origin_port: int, mtls: bool) -> Running:
    name = "tulle-mtls" if mtls else "tulle-2hop"
    sport, cport = free_port(), free_port()
    server = _start_tulle(ps, f"{name}-server",
                          tulle_server_config(sport, free_port(), origin_port, mtls), sport)
    client_cfg = tulle_client_config(cport, free_port(), sport, mtls)
    client = _start_tulle(ps, f"{name}-client", client_cfg, cport)
    spids, cpids = tree(server.pid), tree(client.pid)
    SECOND_HOPS[name] = Hop2(sport, spids, [client, server], [cpids, spids])
    # `proc` None: the runner stops the pair with `stop_pair`.
    return Running(name, cport, None, cpids + spids)


def stop_pair(ps: ProcessSet, name: str) -> None:
    hop = SECOND_HOPS.get(name)
    if hop is not None:
        for proc in hop.procs:
            ps.stop(proc)


def hop_rss_mb(name: str) -> list[float]:
    """Each hop's resident memory now (MB)."""
    hop = SECOND_HOPS[name]
    return [round(rss_bytes(p) / (1024 * 1024), 1) for p in hop.hop_pids]


def start_tulle_mtls(ps: ProcessSet, origin_port: int, protocol: str) -> Running:
    _http1_only(protocol)
    return _tulle_pair(ps, origin_port, mtls=True)


def start_tulle_2hop(ps: ProcessSet, origin_port: int, protocol: str) -> Running:
    _http1_only(protocol)
    return _tulle_pair(ps, origin_port, mtls=False)


def haproxy_tls_configs(tmp: Path, files: dict[str, Path], port: int, hop2_port: int,
                        origin_port: int, *, bind: str = "127.0.0.1",
                        hop2_dial: str | None = None, uid: int | None = None
                        ) -> tuple[str, str]:
    """Both hops' configs.  On loopback everything is 127.0.0.1; in namespaces
    (`bench.netns`) the hops listen on every address of their pod (`bind` "0.0.0.0", where
    iptables redirects to them), the first dials the second at `hop2_dial` (its pod's address
    and application port, which the server pod's rules send to `hop2_port`), and both
    drop to `uid` after reading their certificates as root (the proxies' uid, which the pods'
    interception rules leave alone)."""
    dial = hop2_dial or f"127.0.0.1:{hop2_port}"
    user = "" if uid is None else f"  uid {uid}\n  gid {uid}\n"
    glob = """global
  nbthread 1
  maxconn 4000
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-server-options ssl-min-ver TLSv1.3
  pidfile {pid}
""" + user + """

defaults
  mode http
  timeout connect 1s
  timeout client 300s
  timeout server 300s
  timeout http-keep-alive 300s
"""
    verify = f"verify required ca-file {files['ca']}"
    hop1 = glob.format(pid=tmp / "haproxy-tls-1.pid") + f"""
frontend bench
  bind {bind}:{port}
  default_backend hop2

backend hop2
  http-reuse always
  server h2 {dial} ssl {verify} crt {files['client']} alpn http/1.1
"""
    hop2 = glob.format(pid=tmp / "haproxy-tls-2.pid") + f"""
frontend inbound
  bind {bind}:{hop2_port} ssl crt {files['server']} {verify} alpn http/1.1
  default_backend origin

backend origin
  http-reuse always
  server o1 127.0.0.1:{origin_port}
"""
    return hop1, hop2


def start_haproxy_tls(ps: ProcessSet, origin_port: int, protocol: str) -> Running:
    _http1_only(protocol)
    files = certs().write(ps.tmp)
    port, hop2_port = free_port(), free_port()
    hop1, hop2 = haproxy_tls_configs(ps.tmp, files, port, hop2_port, origin_port)
    procs, trees = [], []
    for i, (text, listen) in ((2, (hop2, hop2_port)), (1, (hop1, port))):
        conf = ps.tmp / f"haproxy-tls-{i}.cfg"
        conf.write_text(text)
        proc = ps.start(f"haproxy-tls-{i}", ["haproxy", "-db", "-f", str(conf)], cpu=PROXY_CPU)
        wait_port(listen, proc)
        procs.append(proc)
        trees.append(tree(proc.pid))
    SECOND_HOPS["haproxy-tls"] = Hop2(hop2_port, trees[0], procs, trees[::-1])
    return Running("haproxy-tls", port, None, trees[1] + trees[0])


def _http1_only(protocol: str) -> None:
    from bench.peers import Skip

    if protocol != "http1":
        raise Skip("the mTLS row is measured on HTTP/1.1 only")


MTLS_STARTERS = {"tulle-mtls": start_tulle_mtls, "tulle-2hop": start_tulle_2hop,
                 "haproxy-tls": start_haproxy_tls}


# -- new handshakes per second ---------------------------------------------------------------


def _client_context() -> ssl.SSLContext:
    import os

    c = certs()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=c.ca)
    fds = []
    try:
        for data in c.client:
            fd = os.memfd_create("bench-pem", os.MFD_CLOEXEC)
            os.write(fd, data.encode())
            fds.append(fd)
        ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
    finally:
        for fd in fds:
            os.close(fd)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def _connections(port: int, seconds: float, concurrency: int) -> tuple[int, int]:
    ctx = _client_context()
    request = b"GET /1k HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n"
    done = failed = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def worker() -> None:
        nonlocal done, failed
        while loop.time() < end:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
                writer.write(request)
                data = await asyncio.wait_for(reader.read(), 5)
                writer.close()
                if data.startswith(b"HTTP/1.1 200"):
                    done += 1
                else:
                    failed += 1
            except (OSError, ssl.SSLError, TimeoutError):
                failed += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done, failed


def measure_handshakes(name: str, seconds: float = 3.0, concurrency: int = 8) -> dict[str, Any]:
    """New mTLS connections (full handshake + one request) against the second hop of `name`:
    per second of wall time and per CPU-second of the server proxy (per core)."""
    from bench.measure import Meter, rnd

    hop = SECOND_HOPS[name]
    with Meter(hop.pids) as m:
        t0 = time.monotonic()
        done, failed = asyncio.run(_connections(hop.port, seconds, concurrency))
        wall = time.monotonic() - t0
    out: dict[str, Any] = {
        "handshakes_per_s": rnd(done / max(1e-9, m.proxy_s), 1),
        "handshakes_per_s_wall": rnd(done / wall, 1),
        "connections": done, "failed": failed,
        "server_cpu_util": rnd(m.proxy_s / max(1e-9, m.wall), 2),
        "contention": m.contention()}
    return out
