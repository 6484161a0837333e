"""A fixed-rate HTTP/1.1 load generator (what wrk2 does; Debian has no wrk2).

N keep-alive connections share one timetable: request *i* is due at ``t0 + i / rate`` and goes
on connection ``i % N``.  A closed-loop tool (wrk) waits for each response before sending the
next request, so a slow response silently removes the requests that should have been sent
meanwhile ("coordinated omission") and the tail looks better than it is.  Here a request that
falls due while its connection is still waiting is sent the moment the response arrives, and
its latency counts from when it was *due*.

A request whose connection is idle when it falls due is sent when a pacer wakes the loop for
it, and counts from the moment it was actually written; how late that was is reported on its own
as ``send_lag_ms`` so the generator's overhead can be checked (run it against the origin
directly).  The pacer (``--pacing thread``, the default) is a thread that sleeps to each due time
with the kernel's nanosecond timer and wakes the loop: sends land ~0.1 ms after they fall due,
one per 1/rate.  The event loop's own timers (``--pacing timer``) have millisecond resolution:
they fire up to ~0.8 ms early or ~1.2 ms late, so requests due a millisecond apart often leave
together, and each one that does waits in the proxy behind the other (ADR 0089).

    python -m bench.loadgen --port 8080 --rate 1000 --duration 4 --warmup 0.5

prints one JSON object on stdout.  Bounded in count (rate x (warmup + duration)) and in time
(+ --timeout for the last responses).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httptools  # type: ignore[import-untyped,unused-ignore]
import uvloop

perf = time.perf_counter


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    s = sorted(values)
    n = len(s)

    def q(p: float) -> float:
        return s[min(n - 1, max(0, int(p * n + 0.5) - 1))]

    return {"p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "p999": q(0.999),
            "max": s[-1], "mean": sum(s) / n}


class Run:
    """The timetable and what was measured."""

    def __init__(self, rate: float, warmup: float, duration: float, conns: int,
                 request: bytes) -> None:
        self.rate = rate
        self.conns = conns
        self.total = int(rate * (warmup + duration))
        self.request = request
        self.t0 = 0.0
        self.record_from = 0.0
        self.warmup = warmup
        self.latency: list[float] = []
        self.service: list[float] = []
        self.lag: list[float] = []
        self.completed = 0
        self.non2xx = 0
        self.errors = 0
        self.finished_conns = 0
        self.done: asyncio.Future[None] | None = None
        self.stopped = False

    def due(self, i: int) -> float:
        return self.t0 + i / self.rate

    def conn_finished(self) -> None:
        self.finished_conns += 1
        if self.finished_conns == self.conns and self.done is not None and not self.done.done():
            self.done.set_result(None)


class Client(asyncio.Protocol):
    """One keep-alive connection working through indices k, k+N, k+2N, ..."""

    __slots__ = (
        "i",
        "loop",
        "paced",
        "parser",
        "ref",
        "run",
        "sent_at",
        "status",
        "transport",
        "waiting",
        "woken",
    )

    def __init__(self, run: Run, k: int, loop: asyncio.AbstractEventLoop) -> None:
        self.run = run
        self.i = k
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.ref = 0.0
        self.sent_at = 0.0
        self.status = 0
        self.paced = False  # a Pacer wakes it for each due request (else the loop's timers)
        self.waiting = -1  # the index it is idle for, until the pacer's wake-up
        self.woken = -1  # the last index the pacer woke it for (loop thread only)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def start(self) -> None:
        self._next()

    def _next(self) -> None:
        run = self.run
        if self.i >= run.total:
            run.conn_finished()
            return
        now = perf()
        due = run.due(self.i)
        if now >= due:
            self._send(due, now)  # behind the timetable: latency counts from when it was due
        elif self.paced:
            if self.woken >= self.i:  # its wake-up already came: never wait for another
                self._timer(due)
            else:
                self.waiting = self.i
        else:
            self.loop.call_later(due - now, self._timer, due)

    def wake(self, i: int) -> None:
        """The pacer's call when request *i* falls due: sent now if this connection is idle
        waiting for it; if it is still busy with an earlier one, `_next` sends it on the
        response, counted from when it was due.  `woken` keeps a wake-up that came before
        `_next` found the request not yet due (the pacer's clock and `perf` disagreeing) from
        being lost: the request would never be sent, nor any later one of the connection."""
        self.woken = i
        if self.waiting == i:
            self.waiting = -1
            self._timer(self.run.due(i))

    def _timer(self, due: float) -> None:
        if self.transport is None:
            return  # connection lost; its remaining requests are already counted as errors
        now = perf()
        self.run.lag.append(now - due)
        self._send(now, now)  # the connection was idle; only the generator's timer was late

    def _send(self, ref: float, now: float) -> None:
        self.ref = ref
        self.sent_at = now
        if self.transport is not None:
            self.transport.write(self.run.request)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.run.errors += 1
            if self.transport is not None:
                self.transport.close()

    def on_status(self, _status: bytes) -> None:
        self.status = self.parser.get_status_code()

    def on_message_complete(self) -> None:
        t = perf()
        run = self.run
        if self.ref >= run.record_from:
            run.latency.append(t - self.ref)
            run.service.append(t - self.sent_at)
        run.completed += 1
        if not 200 <= self.status < 300:
            run.non2xx += 1
        self.i += run.conns
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        run = self.run
        if self.i < run.total:
            # This request and every later one of this connection's share of the timetable.
            run.errors += (run.total - self.i + run.conns - 1) // run.conns
            self.i = run.total
            run.conn_finished()
        self.transport = None


class Pacer(threading.Thread):
    """Wakes each request's connection in the loop at the moment it falls due.

    `time.sleep` is the kernel's nanosecond sleep; `call_soon_threadsafe` wakes the loop at
    once.  Bounded: one wake-up per request of the timetable, and it stops with the run."""

    def __init__(self, run: Run, clients: list[Client], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(name="pacer", daemon=True)
        self.timetable = run
        self.clients = clients
        self.loop = loop

    def run(self) -> None:
        run, clients, n = self.timetable, self.clients, len(self.clients)
        for i in range(run.total):
            if run.stopped:
                return
            wait = run.due(i) - perf()
            if wait > 0:
                time.sleep(wait)
            try:
                self.loop.call_soon_threadsafe(clients[i % n].wake, i)
            except RuntimeError:  # the loop is closed: the run is over
                return


def start(run: Run, clients: list[Client], loop: asyncio.AbstractEventLoop,
          pacing: str = "thread") -> Pacer | None:
    """Start the timetable (`run.t0` set by the caller); the pacer's thread when
    ``pacing == "thread"``."""
    pacer = None
    if pacing == "thread":
        for c in clients:
            c.paced = True
        pacer = Pacer(run, clients, loop)
    for c in clients:
        c.start()
    if pacer is not None:
        pacer.start()
    return pacer


async def connect(run: Run, loop: asyncio.AbstractEventLoop, host: str, port: int,
                  make: Callable[[Run, int, asyncio.AbstractEventLoop], Client] = Client
                  ) -> list[Client]:
    """The timetable's `run.conns` keep-alive connections, made by `make` (a subclass that
    records more, for `bench.tail_split`)."""
    clients: list[Client] = []
    for k in range(run.conns):
        c = make(run, k, loop)
        await loop.create_connection(lambda c=c: c, host, port)  # type: ignore[misc]
        clients.append(c)
    return clients


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    host = f"{args.host}:{args.port}"
    extra = "".join(f"{h}\r\n" for h in args.header)
    request = (f"GET {args.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tulle-bench\r\n"
               f"Accept: */*\r\n{extra}\r\n").encode()
    run = Run(args.rate, args.warmup, args.duration, args.connections, request)
    clients = await connect(run, loop, args.host, args.port)
    run.done = loop.create_future()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    run.t0 = perf() + 0.01
    run.record_from = run.t0 + args.warmup
    start(run, clients, loop, args.pacing)
    try:
        await asyncio.wait_for(run.done, args.warmup + args.duration + args.timeout)
    except TimeoutError:
        pass
    run.stopped = True
    elapsed = perf() - run.t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    for c in clients:
        if c.transport is not None:
            c.transport.close()
    timed_out = max(0, run.total - run.completed - run.errors)
    own_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    ms = 1000.0

    def scaled(d: dict[str, float]) -> dict[str, float]:
        return {k: round(v * ms, 4) for k, v in d.items()}

    return {
        "rate": args.rate, "connections": args.connections, "pacing": args.pacing,
        "duration_s": args.duration,
        "warmup_s": args.warmup, "scheduled": run.total, "completed": run.completed,
        "recorded": len(run.latency), "non2xx": run.non2xx, "errors": run.errors,
        "timed_out": timed_out, "elapsed_s": round(elapsed, 3),
        "achieved_rps": round(run.completed / elapsed, 1) if elapsed > 0 else 0.0,
        "latency_ms": scaled(percentiles(run.latency)),
        "service_ms": scaled(percentiles(run.service)),
        "send_lag_ms": scaled(percentiles(run.lag)),
        "generator_cpu_us_per_req": round(own_cpu * 1e6 / max(1, run.completed), 1),
        **({"samples_ms": [round(x * ms, 4) for x in run.latency]} if args.samples else {}),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/")
    ap.add_argument("--header", action="append", default=[],
                    help="an extra request header, `Name: value` (repeatable)")
    ap.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    ap.add_argument("--duration", type=float, default=4.0, help="recorded seconds")
    ap.add_argument("--warmup", type=float, default=0.5, help="unrecorded seconds first")
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=3.0,
                    help="seconds after the timetable ends to wait for the last responses")
    ap.add_argument("--pacing", choices=("thread", "timer"), default="thread",
                    help="what wakes an idle connection when its request falls due: a thread's "
                         "nanosecond sleep (default) or the event loop's millisecond timers")
    ap.add_argument("--samples", action="store_true",
                    help="also print every recorded latency (to merge several runs)")
    args = ap.parse_args(argv)
    out = uvloop.run(main_async(args))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
