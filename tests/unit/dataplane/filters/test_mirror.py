"""RequestMirror on a scripted stream: copies go to the mirror cluster with `-shadow`, the main
request never waits, and every bound drops rather than queues."""

from __future__ import annotations

import random
from typing import Any

from tulle.dataplane.exchange import RequestHead, upstream_timeout
from tulle.dataplane.filters import factory_for
from tulle.dataplane.filters.mirror import MAX_BODY, MAX_IN_FLIGHT, MirrorFactory, shadow
from tulle.dataplane.http.chain import ChainRun, build_chain
from tulle.dataplane.telemetry.metrics import ProxyMetrics
from tulle.proxyconfig.filters import RequestMirror


class Up:
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.ended = False
        self.was_reset = False

    def send_data(self, data: bytes) -> None:
        self.data.append(data)

    def send_end(self, trailers: Any = None) -> None:
        self.ended = True

    def reset(self) -> None:
        self.was_reset = True


class Cluster:
    def __init__(self) -> None:
        self.name = "shadow"
        self.m_mirrors = ProxyMetrics().mirror_requests
        self.opened: list[tuple[RequestHead, Any, bool, Any, Up]] = []
        self.healthy = True

    def open_stream(self, head: RequestHead, sink: Any, end: bool, request: Any = None) -> Any:
        if not self.healthy:
            return None
        up = Up()
        self.opened.append((head, sink, end, request, up))
        return up

    def count(self, outcome: str) -> float:
        return self.m_mirrors.labels("shadow", outcome).value


class Port:
    def __init__(self, cluster: Cluster, bodiless: bool) -> None:
        self.c = cluster
        self.bodiless = bodiless

    def upstream_cluster(self, name: str) -> Any:
        return self.c if name == "shadow" else None

    def filters_continue(self) -> None:
        raise AssertionError("a mirror never stops")

    def filter_reply(self, status: int, body: bytes) -> None:
        raise AssertionError(f"unexpected reply {status}")

    def filter_error(self, name: str) -> None:
        raise AssertionError(name)


def start(cfg: RequestMirror, cluster: Cluster, bodiless: bool = True,
          content_length: int | None = None, factory: Any = None) -> ChainRun:
    chain = build_chain([factory or factory_for(cfg)])
    assert chain is not None
    p = Port(cluster, bodiless)
    head = RequestHead(b"POST", b"/p?x=1", b"api:80", b"http", [(b"x-a", b"1")], content_length)
    run = ChainRun(chain, head, p, p)
    assert run.request_head() is True  # the main request goes on at once
    return run


def test_a_copy_goes_to_the_mirror_with_a_shadow_authority_and_its_own_head() -> None:
    c = Cluster()
    run = start(RequestMirror(cluster="shadow"), c)
    ((head, sink, end, request, _),) = c.opened
    assert (head.method, head.path, head.authority, head.headers) == (
        b"POST", b"/p?x=1", b"api-shadow:80", [(b"x-a", b"1")])
    assert head is not run.head and head.headers is not run.head.headers
    assert end is True and request.per_try_timeout > 0
    assert c.count("sent") == 1
    sink.on_upstream_error(upstream_timeout("slow"))  # the copy's failure: counted, nothing else
    assert c.count("failed") == 1


def test_shadow_authorities() -> None:
    assert shadow(b"api") == b"api-shadow"
    assert shadow(b"api:8080") == b"api-shadow:8080"
    assert shadow(b"[::1]:80") == b"[::1]-shadow:80"


def test_the_body_follows_up_to_the_bound_then_the_copy_is_reset() -> None:
    c = Cluster()
    run = start(RequestMirror(cluster="shadow"), c, bodiless=False)
    (_, _, end, _, up) = c.opened[0]
    assert end is False
    assert run.request_data(b"abc", False) == b"abc"  # the main request's bytes are unchanged
    assert run.request_data(b"", True) == b""
    assert up.data == [b"abc"] and up.ended
    run = start(RequestMirror(cluster="shadow"), c, bodiless=False)
    up = c.opened[1][4]
    assert run.request_data(b"x" * MAX_BODY, False) is not None
    assert run.request_data(b"y", False) == b"y"
    assert up.was_reset and not up.ended and c.count("dropped") == 1


def test_a_declared_body_over_the_bound_is_not_mirrored() -> None:
    c = Cluster()
    start(RequestMirror(cluster="shadow"), c, bodiless=False, content_length=MAX_BODY + 1)
    assert c.opened == [] and c.count("dropped") == 1


def test_in_flight_copies_are_bounded_per_route() -> None:
    c = Cluster()
    f = MirrorFactory(RequestMirror(cluster="shadow"))
    for _ in range(MAX_IN_FLIGHT + 3):
        start(RequestMirror(cluster="shadow"), c, factory=f)
    assert len(c.opened) == MAX_IN_FLIGHT and c.count("dropped") == 3
    c.opened[0][1].on_response_end(None)  # one copy finished: room for one more
    start(RequestMirror(cluster="shadow"), c, factory=f)
    assert len(c.opened) == MAX_IN_FLIGHT + 1


def test_a_request_that_ends_before_its_body_resets_its_copy() -> None:
    c = Cluster()
    run = start(RequestMirror(cluster="shadow"), c, bodiless=False)
    run.done()
    assert c.opened[0][4].was_reset and c.count("failed") == 1


def test_the_share_is_drawn_per_request() -> None:
    c = Cluster()
    random.seed(7)
    f = MirrorFactory(RequestMirror(cluster="shadow", numerator=1, denominator=4))
    for _ in range(400):
        start(RequestMirror(cluster="shadow"), c, factory=f)
        for _, sink, _, _, _ in c.opened:
            sink.on_response_end(None)
    assert 70 <= len(c.opened) <= 130
    none = Cluster()
    for _ in range(50):
        start(RequestMirror(cluster="shadow", numerator=0), none)
    assert none.opened == []


def test_no_endpoint_counts_failed_and_the_request_goes_on() -> None:
    c = Cluster()
    c.healthy = False
    start(RequestMirror(cluster="shadow"), c)
    assert c.count("sent") == 1 and c.count("failed") == 1
