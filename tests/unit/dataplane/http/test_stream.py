"""The request stream as scripts: scripted filters, a recording port, a scripted upstream.

Each test reads as an exchange: the driver feeds the request (`route`, `request_data`,
`request_end`), the upstream answers through the stream's `ResponseSink` side, and the test
asserts what the client got (the port's log), what the upstream got, what the filters saw and
that the request was recorded exactly once.  No sockets and no event loop: a fake clock and a
timer list stand in for the loop, so a deadline fires when the test says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from tulle.dataplane.exchange import Headers, RequestHead, ResponseHead, upstream_reset
from tulle.dataplane.http.chain import build_chain
from tulle.dataplane.http.facts import ConnectionFacts
from tulle.dataplane.http.filter import BUFFER, CONTINUE, STOP, FilterStream, HttpFilter
from tulle.dataplane.http.port import StreamConn
from tulle.dataplane.http.stream import RequestStream
from tulle.dataplane.listeners.dispatch import Decision
from tulle.dataplane.listeners.handle import ListenerHandle
from tulle.dataplane.listeners.listener_context import ListenerContext
from tulle.dataplane.listeners.request_stats import RequestStats
from tulle.dataplane.overload import OverloadGuard
from tulle.dataplane.telemetry.tap import TapHub
from tulle.dataplane.upstream.cluster import ClusterRuntime

# -- the scripted world ------------------------------------------------------------------------


class Timer:
    def __init__(self, loop: Loop, at: float, fn: Callable[[], None]) -> None:
        self.loop, self.at, self.fn, self.cancelled = loop, at, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """time() and call_later() only: the test moves the clock and fires what is due."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[Timer] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        t = Timer(self, self.now + delay, fn)
        self.timers.append(t)
        return t

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for t in [t for t in self.timers if t.at <= self.now and not t.cancelled]:
            self.timers.remove(t)
            t.fn()


class Stats(RequestStats):
    """Records what is counted (a `RequestStats`: compiled code checks the declared class)."""

    def __init__(self) -> None:  # (no metric children: `count` is replaced)
        self.counted: list[tuple[int, str]] = []
        self.golden = None

    def count(self, status: int, flags: str, duration_ms: float) -> None:
        self.counted.append((status, flags))


class Ctx(ListenerContext):
    """The listener context, as `resolve` and the stream read it: every request is routed to
    the decision the test gives.  (A subclass: compiled code checks the declared class; its
    own `__init__` sets only what the stream reads.)"""

    def __init__(self, high_water: int = 1000, sweep_timeout_min: float = 10.0) -> None:
        self.name = "l"
        self.paths = None
        self.generate_request_id = False
        self.tap = TapHub()  # never started: the request path's one test for a live tap
        self.tracer = None
        self.access_log = None
        self.settings = SimpleNamespace(request_timeout_ms=0)  # type: ignore[assignment]
        self.high_water = high_water
        self.sweep_timeout_min = sweep_timeout_min
        self.decisions = {}  # none shared: `decision` routes
        self.st = Stats()
        self.filter_errors: list[str] = []
        self.routed_to: Decision | None = None

    def decision(self, cluster: str, timeout_ms: int, *args: Any, **kwargs: Any) -> Decision:
        assert self.routed_to is not None
        return self.routed_to

    def stats(self, cluster: str, addressed: str = "") -> Stats:
        return self.st

    def filter_error(self, name: str) -> None:
        self.filter_errors.append(name)


class Conn(StreamConn):
    """The connection side a stream needs (`StreamConn`), on stand-ins."""

    def __init__(self, **ctx: Any) -> None:
        self.ctx: Any = Ctx(**ctx)
        self.loop: Any = Loop()
        self.facts = ConnectionFacts("l", "outbound", ("10.0.0.7", 4242), tls=True, alpn="h2")
        self.write_paused = False
        self.deadline = 0.0
        self.deadline_kind = ""
        self.router = None
        self.cluster = "c"
        self.guard = OverloadGuard()  # never rejecting: no metrics, no limits
        self.handle = ListenerHandle("l", self.ctx, guard=self.guard)

    def follow_snapshot(self) -> str:
        raise AssertionError("the snapshot never changes here")


class Upstream:
    """An upstream exchange that records what the stream asks of it."""

    endpoint_key = "10.0.0.9:8080"

    def __init__(self, log: list[object]) -> None:
        self.log = log
        self.paused = False

    def send_data(self, data: bytes) -> None:
        self.log.append(("up.data", data))

    def send_end(self, trailers: Headers | None = None) -> None:
        self.log.append("up.end")

    def reset(self) -> None:
        self.log.append("up.reset")

    def pause_response(self) -> None:
        self.paused = True

    def resume_response(self) -> None:
        self.paused = False


class Cluster(ClusterRuntime):
    """Stands in for a cluster (a subclass: the compiled stream checks the type)."""

    def __init__(self, log: list[object], available: bool = True) -> None:
        self.log = log
        self.available = available
        self.upstream: Upstream | None = None

    def open_stream(self, head: RequestHead, sink: Any, end: bool,
                    request: Any = None) -> Upstream | None:
        self.log.append(("up.open", end))
        if not self.available:
            return None
        self.upstream = Upstream(self.log)
        return self.upstream


class Stream(RequestStream):
    """The port, recording: what a driver would render for the client."""

    __slots__ = ("client", "paused_reading")

    def __init__(self, conn: Conn, head: RequestHead, bodiless: bool) -> None:
        RequestStream.__init__(self, conn, head, bodiless, conn.loop.time())  # type: ignore[arg-type]
        self.client: list[object] = []
        self.paused_reading = False

    def send_head(self, head: ResponseHead, end: bool) -> None:
        self.client.append(("head", head.status, end))

    def send_data(self, data: bytes) -> None:
        self.client.append(("data", data))

    def end_response(self, trailers: Headers | None) -> None:
        self.client.append("end")
        self.complete()

    def complete(self) -> None:
        self.record()

    def send_local(self, status: int, body: bytes,
                   headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.status = status
        self.head_sent = True
        self.client.append(("local", status, body))
        self.complete()

    def send_reset(self) -> None:
        self.client.append("reset")
        self.complete()

    def pause_request(self) -> None:
        self.paused_reading = True

    def resume_request(self) -> None:
        self.paused_reading = False


class Scripted(HttpFilter):
    """Answers each hook from a script (CONTINUE / STOP / BUFFER, a reply tuple, "raise") and
    logs what it saw; keeps the stream it ran on so the test can resume it."""

    __slots__ = ("log", "script", "stream", "tag")

    def __init__(self, tag: str, script: dict[str, object], log: list[str]) -> None:
        self.tag, self.script, self.log = tag, script, log
        self.stream: FilterStream | None = None

    def _do(self, hook: str, stream: FilterStream, extra: str = "") -> int:
        self.stream = stream
        self.log.append(f"{self.tag}.{hook}{extra}")
        what = self.script.get(hook, CONTINUE)
        if isinstance(what, tuple):
            stream.reply(*what)
            return STOP
        if what == "raise":
            raise RuntimeError("filter bug")
        assert isinstance(what, int)
        return what

    def on_request_head(self, stream: FilterStream) -> int:
        return self._do("req", stream)

    def on_request_data(self, stream: FilterStream, data: bytes, end: bool) -> int:
        return self._do("req_data", stream, f"={data.decode()}{'$' if end else ''}")

    def on_response_head(self, stream: FilterStream, head: ResponseHead) -> int:
        return self._do("resp", stream)

    def on_response_data(self, stream: FilterStream, data: bytes, end: bool) -> int:
        return self._do("resp_data", stream, f"={data.decode()}{'$' if end else ''}")

    def on_done(self, stream: FilterStream) -> None:
        self.log.append(f"{self.tag}.done")


class HeadsOnly(Scripted):
    """A scripted filter without data hooks (so a head is never held for them)."""

    __slots__ = ()
    on_request_data = HttpFilter.on_request_data  # type: ignore[assignment]
    on_response_data = HttpFilter.on_response_data  # type: ignore[assignment]


@dataclass
class Factory:
    name: str
    made: list[Scripted]
    script: dict[str, object]
    log: list[str]
    filter_type: type[HttpFilter] = Scripted
    stateless: bool = False

    def create(self) -> HttpFilter:
        f = self.filter_type(self.name[0], self.script, self.log)  # type: ignore[call-arg]
        assert isinstance(f, Scripted)
        self.made.append(f)
        return f


@dataclass
class World:
    conn: Conn
    stream: Stream
    cluster: Cluster
    up_log: list[object]
    filter_log: list[str]
    made: list[Scripted]

    @property
    def upstream(self) -> Upstream:
        assert self.cluster.upstream is not None
        return self.cluster.upstream

    def recorded(self) -> list[tuple[int, str]]:
        return self.conn.ctx.st.counted

    def resume(self, i: int = 0) -> None:
        s = self.made[i].stream
        assert s is not None
        s.resume()


def world(*scripts: tuple[str, dict[str, object]], bodiless: bool = False, timeout_ms: int = 0,
          limit: int = 1 << 20, available: bool = True, heads_only: bool = False,
          **ctx: Any) -> World:
    """A routed request whose route has a filter per script (name: its chain position)."""
    up_log: list[object] = []
    filter_log: list[str] = []
    made: list[Scripted] = []
    kind = HeadsOnly if heads_only else Scripted
    chain = build_chain([Factory(n, made, s, filter_log, kind) for n, s in scripts], limit)
    cluster = Cluster(up_log, available)
    conn = Conn(**ctx)
    head = RequestHead(b"POST", b"/", b"svc", b"http", [], None if not bodiless else 0)
    stream = Stream(conn, head, bodiless)
    stream.stats = conn.ctx.st  # type: ignore[assignment]
    d = Decision(cluster, "c", timeout_ms, stats=stream.stats, chain=chain)  # type: ignore[arg-type]
    w = World(conn, stream, cluster, up_log, filter_log, made)
    conn.ctx.routed_to = d
    stream.dispatch()
    return w


def ok(status: int = 200, length: int | None = None) -> ResponseHead:
    return ResponseHead(status, [], content_length=length)


# -- no filters: the stream alone ----------------------------------------------------------------


def test_without_filters_the_request_and_response_pass_straight_through() -> None:
    w = world()
    s = w.stream
    assert s.run is None and w.up_log == [("up.open", False)]
    s.request_data(b"abc")
    s.request_end(None)
    s.on_response_head(ok(), False)
    s.on_response_data(b"hello")
    s.on_response_end(None)
    assert w.up_log[1:] == [("up.data", b"abc"), "up.end"]
    assert s.client == [("head", 200, False), ("data", b"hello"), "end"]
    assert (s.bytes_in, s.bytes_out) == (3, 5)  # the golden metrics read them on every route
    assert w.recorded() == [(200, "")]


def test_the_connection_facts_reach_the_filters() -> None:
    seen: list[ConnectionFacts] = []

    class Peek(HttpFilter):
        __slots__ = ()

        def on_request_head(self, stream: FilterStream) -> int:
            seen.append(stream.facts)
            return CONTINUE

    @dataclass
    class F:
        name: str = "authz"
        filter_type: type[HttpFilter] = Peek
        stateless: bool = True

        def create(self) -> HttpFilter:
            return Peek()

    conn = Conn()
    chain = build_chain([F()])
    s = Stream(conn, RequestHead(b"GET", b"/", b"a", b"http", []), True)
    conn.ctx.routed_to = Decision(Cluster([]), "c", 0, chain=chain)  # type: ignore[arg-type]
    s.dispatch()
    assert seen == [conn.facts]
    assert (seen[0].peer, seen[0].peer_ip, seen[0].tls, seen[0].alpn) == (
        ("10.0.0.7", 4242), b"10.0.0.7", True, "h2")
    assert seen[0].peer_identity == ""  # a slot: nobody verified the peer


def test_no_endpoint_is_a_local_503_and_recorded() -> None:
    w = world(available=False)
    assert w.stream.client == [("local", 503, b"no healthy endpoint in cluster 'c'\n")]
    assert w.recorded() == [(503, "UH")]


# -- stop / resume ----------------------------------------------------------------------------------


def test_a_stopped_request_head_holds_the_body_then_sends_all_of_it_in_order() -> None:
    w = world(("authz", {"req": STOP}), ("headers", {}))
    s = w.stream
    assert w.up_log == [] and w.filter_log == ["a.req"]
    s.request_data(b"ab")
    s.request_data(b"cd")
    s.request_end(None)
    assert w.up_log == []
    w.resume()
    assert w.filter_log[:2] == ["a.req", "h.req"]
    assert w.filter_log[2:] == ["a.req_data=ab", "h.req_data=ab", "a.req_data=cd",
                                "h.req_data=cd", "a.req_data=$", "h.req_data=$"]
    assert w.up_log == [("up.open", False), ("up.data", b"ab"), ("up.data", b"cd"), "up.end"]
    assert s.bytes_in == 4


def test_held_request_body_above_the_high_water_mark_pauses_the_client_until_open() -> None:
    w = world(("authz", {"req": STOP}), high_water=4)
    s = w.stream
    s.request_data(b"abc")
    assert not s.paused_reading
    s.request_data(b"def")
    assert s.paused_reading and s.body_size == 6
    w.resume()
    assert not s.paused_reading and s.body is None


def test_a_stopped_response_head_pauses_the_upstream_and_resumes_with_what_waited() -> None:
    w = world(("authz", {}), ("headers", {"resp": STOP}))
    s = w.stream
    s.request_end(None)
    s.on_response_head(ok(), False)
    assert w.upstream.paused and s.client == []
    s.on_response_data(b"x")  # already read by the pool: held
    s.on_response_end(None)
    assert s.client == [] and w.recorded() == []
    w.resume(1)
    # The filter before it (responses run last to first) sees the head on resume.
    assert w.filter_log.index("a.resp") == w.filter_log.index("h.resp") + 1
    assert not w.upstream.paused
    assert s.client == [("head", 200, False), ("data", b"x"), "end"]
    assert w.recorded() == [(200, "")]


def test_a_stopped_response_head_with_no_body_goes_out_ended() -> None:
    w = world(("headers", {"resp": STOP}), bodiless=True)
    w.stream.on_response_head(ok(204), True)
    w.resume()
    assert w.stream.client == [("head", 204, True)] and w.recorded() == [(204, "")]


def test_held_response_body_past_the_bound_is_answered_500() -> None:
    w = world(("headers", {"resp": STOP}), bodiless=True, limit=4)
    s = w.stream
    s.on_response_head(ok(), False)
    s.on_response_data(b"abc")
    s.on_response_data(b"de")
    assert s.client == [("local", 500, b"filter buffer limit exceeded\n")]
    assert "up.reset" in w.up_log and w.recorded() == [(500, "")]
    w.resume()  # the filter's late resume changes nothing
    assert len(s.client) == 1


# -- local replies from each hook -------------------------------------------------------------------


@pytest.mark.parametrize(("hook", "upstream_opened"), [
    ("req", False), ("req_data", True), ("resp", True), ("resp_data", True)])
def test_a_filter_may_answer_from_each_hook(hook: str, upstream_opened: bool) -> None:
    w = world(("authz", {hook: (403, b"no\n")}))
    s = w.stream
    s.request_data(b"body")
    s.request_end(None)
    s.on_response_head(ok(), False)
    s.on_response_data(b"resp")
    s.on_response_end(None)
    assert s.client == [("local", 403, b"no\n")]
    assert (("up.open", False) in w.up_log) == upstream_opened
    if upstream_opened:
        assert w.up_log[-1] == "up.reset"  # the upstream's exchange is dropped
    assert w.recorded() == [(403, "")] and w.filter_log.count("a.done") == 1


def test_a_reply_after_the_response_head_left_resets_instead() -> None:
    w = world(("authz", {}), bodiless=True, heads_only=True)
    s = w.stream
    s.on_response_head(ok(), False)
    w.made[0].stream.reply(500, b"late\n")  # type: ignore[union-attr]
    assert s.client == [("head", 200, False), "reset"] and w.recorded() == [(200, "")]


def test_a_failing_hook_is_a_500_counted_by_filter_name() -> None:
    w = world(("headers", {"req_data": "raise"}))
    w.stream.request_data(b"x")
    assert w.stream.client == [("local", 500, b"filter error\n")]
    assert w.conn.ctx.filter_errors == ["headers"]


# -- buffering ---------------------------------------------------------------------------------------


def test_request_buffer_holds_until_the_filter_continues_then_the_rest_flows() -> None:
    script: dict[str, object] = {"req_data": BUFFER}
    w = world(("authz", script))
    s = w.stream
    s.request_data(b"ab")
    s.request_data(b"cd")
    assert w.up_log == [("up.open", False)]
    script["req_data"] = CONTINUE
    s.request_data(b"ef")
    s.request_end(None)
    assert w.up_log[1:] == [("up.data", b"abcdef"), "up.end"]
    assert w.filter_log[-1] == "a.req_data=$"  # the end of the body is a call of its own


def test_request_buffer_past_the_bound_is_answered_413() -> None:
    w = world(("authz", {"req_data": BUFFER}), limit=5)
    s = w.stream
    s.request_data(b"abc")
    s.request_data(b"def")
    assert s.client == [("local", 413, b"filter buffer limit exceeded\n")]
    assert w.up_log[-1] == "up.reset" and w.recorded() == [(413, "")]


def test_response_buffer_holds_the_head_until_the_filter_lets_bytes_go() -> None:
    script: dict[str, object] = {"resp_data": BUFFER}
    w = world(("authz", script), bodiless=True)
    s = w.stream
    s.on_response_head(ok(), False)
    s.on_response_data(b"ab")
    assert s.client == []  # the head waits: a 500 is still possible
    s.on_response_data(b"cd")
    s.on_response_end(None)  # BUFFER at the end lets everything through
    assert s.client == [("head", 200, False), ("data", b"abcd"), "end"]
    assert s.bytes_out == 4 and w.recorded() == [(200, "")]


def test_response_buffer_past_the_bound_is_answered_500_not_cut_short() -> None:
    w = world(("authz", {"resp_data": BUFFER}), bodiless=True, limit=3)
    s = w.stream
    s.on_response_head(ok(), False)
    s.on_response_data(b"ab")
    s.on_response_data(b"cd")
    assert s.client == [("local", 500, b"filter buffer limit exceeded\n")]
    assert w.up_log[-1] == "up.reset" and w.recorded() == [(500, "")]


# -- resets and upstream failures in every state -----------------------------------------------------


def _to_state(w: World, state: str) -> None:
    s = w.stream
    if state in ("head sent", "mid body"):
        s.on_response_head(ok(), False)
    if state == "mid body":
        s.on_response_data(b"part")


@pytest.mark.parametrize("state", ["stopped before upstream", "upstream open", "head sent",
                                   "mid body"])
def test_the_client_going_away_in_each_state(state: str) -> None:
    w = world(("authz", {"req": STOP} if state == "stopped before upstream" else {}),
              heads_only=True)
    _to_state(w, state)
    w.stream.downstream_reset()
    w.stream.downstream_reset()  # twice: still once
    opened = state != "stopped before upstream"
    assert (w.up_log[-1:] == ["up.reset"]) == opened
    assert w.recorded() == [(200 if state in ("head sent", "mid body") else 0, "DC")]
    assert w.filter_log.count("a.done") == 1
    if not opened:
        w.resume()  # the filter's late resume opens nothing
        assert w.up_log == []


def test_the_client_going_away_keeps_the_flag_already_set() -> None:
    """A client gone during an injected delay (the fault filter set DI and stopped) is recorded
    `DI,DC`: the bare DI with status 0 said nothing of why no answer was sent."""
    w = world(("authz", {"req": STOP}), heads_only=True)
    w.stream.flags = "DI"
    w.stream.downstream_reset()
    assert w.recorded() == [(0, "DI,DC")]


@pytest.mark.parametrize("state", ["upstream open", "head sent", "mid body"])
def test_an_upstream_failure_in_each_state(state: str) -> None:
    w = world(("authz", {}), heads_only=True)
    _to_state(w, state)
    w.stream.on_upstream_error(upstream_reset("connection reset"))
    if state == "upstream open":
        assert w.stream.client == [("local", 502, b"UC: connection reset\n"[4:])]
        assert w.recorded() == [(502, "UC")]
    else:
        assert w.stream.client[-1] == "reset" and w.recorded() == [(200, "UC")]
    assert w.filter_log.count("a.done") == 1


# -- the deadline ------------------------------------------------------------------------------------


def test_the_deadline_fires_while_a_filter_holds_the_request() -> None:
    w = world(("authz", {"req": STOP}), timeout_ms=500)  # below the sweep: a timer
    w.conn.loop.advance(0.499)
    assert w.stream.client == []
    w.conn.loop.advance(0.002)
    assert w.stream.client == [("local", 504, b"upstream request timeout\n")]
    assert w.recorded() == [(504, "UT")] and w.filter_log.count("a.done") == 1
    w.resume()
    assert w.up_log == []  # resumed too late: never opened


def test_a_long_deadline_rides_on_the_connection_sweeper() -> None:
    w = world(("authz", {"req": STOP}), timeout_ms=30_000, sweep_timeout_min=10.0)
    conn, s = w.conn, w.stream
    assert conn.loop.timers == []  # no timer of its own
    assert (conn.deadline_kind, conn.deadline) == ("request", 130.0) and s.due == 130.0
    s.on_timeout()  # what the connection's sweeper calls when the deadline passed
    assert s.client == [("local", 504, b"upstream request timeout\n")]


def test_the_deadline_after_the_response_head_resets() -> None:
    w = world(timeout_ms=500)
    w.stream.on_response_head(ok(), False)
    w.conn.loop.advance(1)
    assert w.stream.client == [("head", 200, False), "reset"]
    assert w.up_log[-1] == "up.reset" and w.recorded() == [(200, "UT")]


def test_a_finished_request_cancels_its_timer() -> None:
    w = world(timeout_ms=500, bodiless=True)
    w.stream.on_response_head(ok(), True)
    assert w.conn.loop.timers[0].cancelled


def test_a_held_body_refused_on_its_way_upstream_lets_the_client_be_read_again() -> None:
    # Held above the high-water mark (the client was paused), then a data hook refuses it as
    # it is flushed: the answer must not leave the client paused for good.
    w = world(("authz", {"req": STOP, "req_data": (413, b"too much\n")}), high_water=2)
    s = w.stream
    s.request_data(b"abc")
    assert s.paused_reading
    w.resume()
    assert s.client == [("local", 413, b"too much\n")] and not s.paused_reading
