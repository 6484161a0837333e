"""`bench.loadgen`'s pacer: requests leave one per 1/rate, not bunched on the loop's
millisecond timer ticks (ADR 0089), and the timetable's other rules still hold."""

from __future__ import annotations

import asyncio

import uvloop
from bench import loadgen

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Origin(asyncio.Protocol):
    """Answers every request head with 200 at once (after `delay` for the slow variant)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        n = data.count(b"\r\n\r\n")
        if self.delay:
            asyncio.get_running_loop().call_later(self.delay, self._answer, n)
        else:
            self._answer(n)

    def _answer(self, n: int) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(RESPONSE * n)


def _run(rate: float, seconds: float, conns: int, pacing: str,
         delay: float = 0.0) -> tuple[loadgen.Run, list[float]]:
    """Drive a timetable against a local origin; the send times of every request."""
    sends: list[float] = []

    class Recording(loadgen.Client):
        def _send(self, ref: float, now: float) -> None:
            sends.append(now)
            super()._send(ref, now)

    async def go() -> loadgen.Run:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: Origin(delay), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        request = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
        run = loadgen.Run(rate, 0.0, seconds, conns, request)
        clients = await loadgen.connect(run, loop, "127.0.0.1", port, Recording)
        run.done = loop.create_future()
        run.t0 = loadgen.perf() + 0.01
        loadgen.start(run, clients, loop, pacing)
        try:
            await asyncio.wait_for(run.done, seconds + 5)
        finally:
            run.stopped = True
            for c in clients:
                if c.transport is not None:
                    c.transport.close()
            server.close()
        return run

    return uvloop.run(go()), sends


def test_the_pacer_sends_every_request_of_the_timetable_once() -> None:
    run, sends = _run(rate=500, seconds=1.0, conns=5, pacing="thread")
    assert run.completed == run.total == 500
    assert run.errors == 0 and run.non2xx == 0
    assert len(sends) == 500
    assert len(run.latency) == 500


def test_the_pacer_spaces_sends_by_the_rate_not_the_loops_timer_ticks() -> None:
    """At 500 req/s the timetable's gap is 2 ms.  The loop's timers fire up to about a
    millisecond early or late, so their sends often leave together; the pacer's do not."""
    run, sends = _run(rate=500, seconds=1.0, conns=5, pacing="thread")
    gaps = [b - a for a, b in zip(sends, sends[1:], strict=False)]
    together = sum(1 for g in gaps if g < 0.0005)
    assert together <= len(gaps) // 20, (together, len(gaps))
    # Nothing leaves early: each send is at or after its due time.
    for i, t in enumerate(sorted(sends)):
        assert t >= run.due(i) - 1e-6, (i, t - run.due(i))


def test_a_request_due_while_its_connection_is_busy_counts_from_when_it_was_due() -> None:
    """One connection, 5 ms per response, a request due every 2 ms: the connection falls
    behind, and the latency of the late requests includes the wait (no coordinated
    omission), with the pacer as with the timers."""
    for pacing in ("thread", "timer"):
        run, sends = _run(rate=500, seconds=0.2, conns=1, pacing=pacing, delay=0.005)
        assert run.completed == run.total == 100
        # 100 requests back to back at >= 5 ms each take >= 0.5 s: the last one waited
        # ~0.3 s past its due time, and that wait is in its latency.
        assert max(run.latency) > 0.25, (pacing, max(run.latency))


def test_a_wake_up_before_the_connection_expects_it_is_not_lost() -> None:
    """If the pacer's wake-up for a request runs before `_next` finds it not yet due (two
    clocks that disagree), the request still goes out, and the connection goes on."""
    written: list[bytes] = []

    class Transport:
        def write(self, data: bytes) -> None:
            written.append(data)

    run = loadgen.Run(1.0, 0.0, 3.0, 1, b"GET / HTTP/1.1\r\n\r\n")
    run.t0 = loadgen.perf() + 3600.0  # every request due an hour from now
    c = loadgen.Client(run, 0, None)  # type: ignore[arg-type]
    c.paced = True
    c.transport = Transport()  # type: ignore[assignment]
    c.wake(0)  # the wake-up comes first: the connection is not waiting for it yet
    c.start()  # `_next`: by its clock request 0 is not due
    assert written == [run.request]
    c.i += 1  # request 0 answered; request 1, not due and not woken: waits for its wake-up
    c._next()
    assert (written, c.waiting) == ([run.request], 1)
    c.wake(1)
    assert written == [run.request] * 2
