"""The FaultInjection filter on a scripted stream: abort and delay shares, header scoping,
gRPC statuses, flags and counts."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.filters import factory_for
from tulle.dataplane.http.facts import ConnectionFacts
from tulle.dataplane.http.filter import CONTINUE, STOP, FilterFactory
from tulle.proxyconfig.filters import HTTPFilter


class Record:
    flags = ""
    authz = ""


class Counters:
    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []

    def fault_injected(self, policy: str, fault: str) -> None:
        self.events.append(("fault", policy, fault))

    def rate_limited(self, policy: str, scope: str) -> None:
        self.events.append(("limited", policy, scope))

    def rate_limit_backend_failure(self, policy: str) -> None:
        self.events.append(("backend_failure", policy))


class Stream:
    """What a filter sees of its request (`FilterStream`), recording what it is asked."""

    def __init__(self, headers: list[tuple[bytes, bytes]] | None = None, *, ip: str = "10.0.0.1",
                 identity: str = "", counters: Counters | None = None) -> None:
        self.head = RequestHead(b"GET", b"/", b"svc", b"http", headers or [])
        self.facts = ConnectionFacts("l", "inbound", (ip, 5555))
        self.facts.peer_identity = identity
        self.record = Record()
        self.counters = counters or Counters()
        self.replies: list[tuple[int, bytes, tuple[tuple[bytes, bytes], ...]]] = []
        self.resumed = asyncio.Event()
        self.settled = asyncio.Event()
        """Set by the first reply or resume: the request's fate is known."""

    def reply(self, status: int, body: bytes, headers: tuple[tuple[bytes, bytes], ...] = ()
              ) -> None:
        self.replies.append((status, body, headers))
        self.settled.set()

    def resume(self) -> None:
        self.resumed.set()
        self.settled.set()


def factory(raw: dict[str, Any]) -> FilterFactory:
    return factory_for(msgspec.convert(raw, HTTPFilter))


GRPC = [(b"content-type", b"application/grpc")]


async def test_abort_half_of_two_thousand_within_five_percent() -> None:
    f = factory({"type": "FaultInjection", "seed": 7, "name": "ns/chaos",
                 "abort": {"http_status": 503, "percent": 50}})
    c = Counters()
    aborted = 0
    for _ in range(2000):
        s = Stream(counters=c)
        verdict = f.create().on_request_head(s)  # type: ignore[arg-type]
        if verdict == STOP:
            aborted += 1
            assert s.replies[0][:2] == (503, b"fault filter abort\n")
            assert s.record.flags == "FI"
        else:
            assert verdict == CONTINUE and s.replies == []
    assert 950 <= aborted <= 1050
    assert c.events.count(("fault", "ns/chaos", "abort")) == aborted


async def test_a_grpc_request_gets_the_grpc_status() -> None:
    f = factory({"type": "FaultInjection", "abort": {"grpc_status": 14}})
    s = Stream(GRPC)
    assert f.create().on_request_head(s) == STOP  # type: ignore[arg-type]
    assert s.replies == [(503, b"fault filter abort\n", ((b"grpc-status", b"14"),))]
    plain = Stream()  # not gRPC: the HTTP status (503 when unset)
    f.create().on_request_head(plain)  # type: ignore[arg-type]
    assert plain.replies == [(503, b"fault filter abort\n", ())]


async def test_a_delay_holds_the_request_then_resumes_it() -> None:
    f = factory({"type": "FaultInjection", "delay": {"fixed_delay_ms": 30}})
    s = Stream()
    flt = f.create()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert flt.on_request_head(s) == STOP  # type: ignore[arg-type]
    assert s.record.flags == "DI"
    await asyncio.wait_for(s.resumed.wait(), 2)
    assert loop.time() - t0 >= 0.029


async def test_a_request_that_ends_while_delayed_is_not_resumed() -> None:
    f = factory({"type": "FaultInjection", "delay": {"fixed_delay_ms": 1}})
    s = Stream()
    flt = f.create()
    flt.on_request_head(s)  # type: ignore[arg-type]
    flt.on_done(s)  # type: ignore[arg-type]
    await asyncio.sleep(0.01)  # past the delay: the cancelled timer must not fire
    assert not s.resumed.is_set()


async def test_only_requests_with_the_headers_meet_the_fault() -> None:
    f = factory({"type": "FaultInjection", "abort": {"http_status": 500},
                 "headers": [{"name": "X-Chaos", "value": "on"}]})
    assert f.create().on_request_head(Stream()) == CONTINUE  # type: ignore[arg-type]
    assert f.create().on_request_head(Stream([(b"x-chaos", b"off")])) == CONTINUE  # type: ignore[arg-type]
    hit = Stream([(b"x-chaos", b"on")])
    assert f.create().on_request_head(hit) == STOP  # type: ignore[arg-type]
    assert hit.replies[0][0] == 500


async def test_zero_percent_never_fires() -> None:
    f = factory({"type": "FaultInjection", "abort": {"http_status": 500, "percent": 0},
                 "delay": {"fixed_delay_ms": 5, "percent": 0}})
    assert all(f.create().on_request_head(Stream()) == CONTINUE  # type: ignore[arg-type]
               for _ in range(500))


def test_only_a_delay_needs_a_filter_per_request() -> None:
    abort = factory({"type": "FaultInjection", "abort": {"http_status": 500}})
    assert abort.stateless and abort.create() is abort.create()
    delay = factory({"type": "FaultInjection", "delay": {"fixed_delay_ms": 5}})
    assert not delay.stateless and delay.create() is not delay.create()
