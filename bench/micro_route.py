"""The router's cost per request for the routing row's table (issue 8), without a proxy.

    .venv/bin/python -m bench.micro_route [-n 20000] [--repeat 15] [--profile]

`bench.run --peers tulle-routes,haproxy-routes` measures the whole proxy and needs an idle
machine; this builds the same route table (`bench/routing_peers.py`: ten rules with a path
regular expression, a header and a query condition each, the request matching the last) into a
`Router` exactly as a snapshot does and times `Router.route` alone on the benchmark request,
next to a one-rule table and to a request matching the first rule.  Each case first checks
which route it gets, so a faster but wrong router cannot be measured.  Numbers are the median
and spread of best-of-batch CPU µs per call over `--repeat` runs, with function calls per
request from the profiler, which no neighbour on a shared machine can move.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from collections.abc import Callable

from bench.peers import BODY_PATH
from bench.routing_peers import MIDDLE_REQUEST, ROUTED_HEADERS, ROUTED_PATH, tulle_routing_config
from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.routing.router import Route, Router
from tulle.proxyconfig import validate


def _head(target: str, headers: tuple[str, ...]) -> RequestHead:
    fields = []
    for h in ("User-Agent: wrk", *headers):
        name, _, value = h.partition(":")
        fields.append((name.strip().lower().encode(), value.strip().encode()))
    return RequestHead(b"GET", target.encode(), b"127.0.0.1:18080", b"http", fields)


def _router(one_rule: bool) -> Router:
    raw = tulle_routing_config(1, 2, 3, 4)
    if one_rule:
        vh = raw["route_tables"][0]["virtual_hosts"][0]  # type: ignore[index]
        vh["rules"] = vh["rules"][-1:]
    return Router(validate(raw).route_tables[0], 15000)


CASES: list[tuple[str, bool, RequestHead, str]] = [
    ("ten-rules-last", False, _head(ROUTED_PATH, ROUTED_HEADERS), "r9"),
    ("ten-rules-middle", False, _head(MIDDLE_REQUEST[0], MIDDLE_REQUEST[1]), "r7"),
    ("ten-rules-none", False, _head(BODY_PATH + "?tier=tin", ROUTED_HEADERS), ""),
    ("one-rule", True, _head(ROUTED_PATH, ROUTED_HEADERS), "r9"),
]


def _name(route: Route | None) -> str:
    return "" if route is None else route.name.rsplit("/", 1)[-1]


def _time(call: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(n):
            call()
        best = min(best, (time.process_time() - t0) / n)
    return best * 1e6


def _calls_of(call: Callable[[], object], n: int) -> None:
    for _ in range(n):
        call()


def _calls(call: Callable[[], object], n: int) -> float:
    prof = cProfile.Profile()
    prof.runcall(_calls_of, call, n)
    return pstats.Stats(prof).total_calls / n  # type: ignore[attr-defined,no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    for name, one, head, want in CASES:
        r = _router(one)
        got = _name(r.route(head))
        if not got.endswith(want) or (want == "" and got != ""):
            raise SystemExit(f"{name}: routed to {got!r}, expected {want!r}")
        call = lambda r=r, head=head: r.route(head)  # noqa: E731
        runs = [_time(call, args.n) for _ in range(args.repeat)]
        med = statistics.median(runs)
        print(f"{name:18} {med:6.2f} us/route (min {min(runs):.2f}, max {max(runs):.2f}, "
              f"{_calls(call, 1000) - 1:.0f} calls)")
        if args.profile and name == "ten-rules-last":
            prof = cProfile.Profile()
            prof.runcall(_calls_of, call, args.n)
            pstats.Stats(prof).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
