"""The mesh DNS resolver's cost per query for a mesh name (issue 11 item 3).

    .venv/bin/python -m bench.micro_dns [--hosts 1000] [-n 20000] [--repeat 7] [--seconds 2]

Two numbers, both for an A query of `svc-<k>.ns-<k>.svc.cluster.local` against a table of
`--hosts` Services (each answer first checked, so a fast wrong answer cannot be measured):

* `decide`: CPU µs per `resolver.decide` (parse, lookup, build the answer) without sockets,
  the median and spread of best-of-batch over `--repeat` runs;
* `udp`: queries per second through a real `ProxyServer`'s UDP listener on 127.0.0.1, with a
  client in the same uvloop keeping 64 queries outstanding for `--seconds`.  Client and proxy
  share one core, so this is a lower bound of what the proxy alone does.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import dns.message
import uvloop

from tulle.dataplane.dns import resolver
from tulle.dataplane.dns.table import build
from tulle.dataplane.server import ProxyServer
from tulle.proxyconfig import validate
from tulle.proxyconfig.model import DNS


def _config(hosts: int) -> dict[str, Any]:
    return {"node": {"namespace": "ns-0"},
            "dns": {"port": 0, "upstreams": ["127.0.0.1:9"],
                    "hosts": [{"service": f"svc-{k}", "namespace": f"ns-{k}",
                               "addresses": [f"10.96.{k // 250}.{k % 250 + 1}"]}
                              for k in range(hosts)]}}


def _query(hosts: int) -> tuple[bytes, str]:
    k = hosts // 2
    q = dns.message.make_query(f"svc-{k}.ns-{k}.svc.cluster.local", "A")
    return q.to_wire(), f"10.96.{k // 250}.{k % 250 + 1}"


def bench_decide(hosts: int, n: int, repeat: int) -> list[float]:
    cfg = validate(_config(hosts)).dns
    assert isinstance(cfg, DNS)
    table = build(cfg, "ns-0")
    data, want = _query(hosts)
    d = resolver.decide(data, table, True)
    assert d.reply is not None
    assert [x.address for x in dns.message.from_wire(d.reply).answer[0]] == [want]
    decide = resolver.decide
    runs = []
    for _ in range(repeat):
        best = float("inf")
        for _ in range(5):
            t0 = time.process_time()
            for _ in range(n):
                decide(data, table, True)
            best = min(best, (time.process_time() - t0) / n)
        runs.append(best * 1e6)
    return runs


class _Client(asyncio.DatagramProtocol):
    def __init__(self, data: bytes, want: bytes) -> None:
        self.data = data
        self.want = want
        self.t: Any = None
        self.answered = 0
        self.wrong = 0

    def connection_made(self, transport: Any) -> None:
        self.t = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if data[-4:] == self.want:
            self.answered += 1
        else:
            self.wrong += 1
        self.t.sendto(self.data)


async def bench_udp(hosts: int, seconds: float) -> tuple[float, int]:
    server = ProxyServer()
    await server.apply(validate(_config(hosts)))
    data, want = _query(hosts)
    packed = bytes(int(x) for x in want.split("."))
    loop = asyncio.get_running_loop()
    t, client = await loop.create_datagram_endpoint(
        lambda: _Client(data, packed), remote_addr=("127.0.0.1", server.dns.port))
    try:
        for _ in range(64):
            t.sendto(data)
        await asyncio.sleep(0.2)  # warm up
        start, t0 = client.answered, loop.time()
        await asyncio.sleep(seconds)
        rate = (client.answered - start) / (loop.time() - t0)
        return rate, client.wrong
    finally:
        t.close()
        await server.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--seconds", type=float, default=2.0)
    a = ap.parse_args()
    runs = bench_decide(a.hosts, a.n, a.repeat)
    print(f"decide  {a.hosts} hosts: {statistics.median(runs):.2f} µs CPU per query "
          f"(min {min(runs):.2f}, max {max(runs):.2f}, {a.repeat} runs)")
    rate, wrong = uvloop.run(bench_udp(a.hosts, a.seconds))
    print(f"udp     {a.hosts} hosts: {rate:,.0f} queries/s through the proxy's listener "
          f"(client in the same loop; {wrong} wrong answers)")


if __name__ == "__main__":
    main()
