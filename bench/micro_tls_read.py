"""CPU per 1 KiB TLS round trip through uvloop, by how the receiving protocol reads (ADR 0063).

    python -m bench.micro_tls_read --rounds 3 --exchanges 20000

One process per variant and round (glibc's mmap threshold is per process and depends on its
history), variants in rotating order; each reports the process CPU time (user + system) per
exchange and the minor page faults per exchange (a block glibc maps for a read faults once
when OpenSSL writes into it).  A TLS 1.3 server and client on loopback in one uvloop process;
the client writes 1 KiB, the server echoes it back; both ends read with the variant's
protocol:

- `copied`: plain `asyncio.Protocol` (uvloop's `SSLObject.read(256 KiB)` per read), glibc's
  default thresholds;
- `reader`: `tulle.dataplane.tlsread.TLSReader` in front of the same protocol;
- `tuned`: `copied` with glibc's mmap threshold raised to 512 KiB (`mallopt`), the
  alternative ADR 0063 measured and did not take;
- `direct`: `reader` with both contexts' `sslobject_class` set to
  `tulle.dataplane.tlsread.DirectSSLObject`, as the proxy's contexts have it (ADR 0067): the
  transport calls OpenSSL's read, write and pending without `ssl.SSLObject`'s Python wrappers.

CPU time, not wall time: a busy machine moves it much less than latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("copied", "reader", "tuned", "direct")
PAYLOAD = b"x" * 1024


def _contexts(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    from bench.mtls_peers import certs

    c = certs()
    (tmp / "ca.pem").write_text(c.ca)
    (tmp / "cert.pem").write_text(c.server[0])
    (tmp / "key.pem").write_text(c.server[1])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.load_verify_locations(tmp / "ca.pem")
    return server, client


class Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self.t: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.t is not None
        self.t.write(data)


class Client(asyncio.Protocol):
    def __init__(self, n: int, done: asyncio.Future[None]) -> None:
        self.n = n
        self.got = 0
        self.done = done
        self.t: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= len(PAYLOAD):
            self.got -= len(PAYLOAD)
            self.n -= 1
            if self.n <= 0:
                self.done.set_result(None)
            else:
                assert self.t is not None
                self.t.write(PAYLOAD)


def _minor_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


async def _one(variant: str, exchanges: int, tmp: Path) -> dict[str, float]:
    from tulle.dataplane.tlsread import DirectSSLObject, TLSReader

    loop = asyncio.get_running_loop()
    sctx, cctx = _contexts(tmp)
    buffered = variant in ("reader", "direct")
    if variant == "direct":
        sctx.sslobject_class = cctx.sslobject_class = DirectSSLObject

    def server_proto() -> asyncio.BaseProtocol:
        return TLSReader(Echo()) if buffered else Echo()

    server = await loop.create_server(server_proto, "127.0.0.1", 0, ssl=sctx)
    port = server.sockets[0].getsockname()[1]
    done: asyncio.Future[None] = loop.create_future()
    client = Client(exchanges, done)
    transport, _ = await loop.create_connection(lambda: client, "127.0.0.1", port, ssl=cctx)
    if buffered:
        transport.set_protocol(TLSReader(client))
    # warm up, then measure
    warm: asyncio.Future[None] = loop.create_future()
    client.n, client.done = 200, warm
    transport.write(PAYLOAD)
    await warm
    client.n, client.done = exchanges, done
    faults0 = _minor_faults()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    transport.write(PAYLOAD)
    await done
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    transport.close()
    server.close()
    return {"cpu_us_per_exchange": cpu * 1e6 / exchanges,
            "wall_us_per_exchange": wall * 1e6 / exchanges,
            "page_faults_per_exchange": (_minor_faults() - faults0) / exchanges}


def _child(variant: str, exchanges: int) -> None:
    import uvloop

    if variant == "tuned":
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 512 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1024 * 1024)  # M_TRIM_THRESHOLD
    with tempfile.TemporaryDirectory() as tmp:
        out = uvloop.run(_one(variant, exchanges, Path(tmp)))
    print(json.dumps(out))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--exchanges", type=int, default=20000)
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _child(args.child, args.exchanges)
        return
    res: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        k = r % len(VARIANTS)
        order = VARIANTS[k:] + VARIANTS[:k]
        for v in order:
            out = subprocess.run([sys.executable, "-m", "bench.micro_tls_read", "--child", v,
                                  "--exchanges", str(args.exchanges)], capture_output=True,
                                 text=True, check=True, env={**os.environ, "TULLE_PURE": "1"})
            res[v].append(json.loads(out.stdout))
    for v, rows in res.items():
        cpu = [x["cpu_us_per_exchange"] for x in rows]
        faults = [x["page_faults_per_exchange"] for x in rows]
        print(f"{v:7s} CPU µs per exchange (both ends): median {statistics.median(cpu):.2f} "
              f"({min(cpu):.2f}-{max(cpu):.2f}); page faults per exchange: "
              f"{statistics.median(faults):.2f}")


if __name__ == "__main__":
    main()
