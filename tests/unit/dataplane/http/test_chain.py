"""The filter chain as scripts: scripted filters against a fake request and a recording port."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tulle.dataplane.exchange import RequestHead, ResponseHead
from tulle.dataplane.http.chain import ORDER, Chain, ChainRun, build_chain
from tulle.dataplane.http.filter import BUFFER, CONTINUE, STOP, FilterStream, HttpFilter


@dataclass
class Port:
    """The driver side: records what the chain asked for."""

    events: list[object] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    facts: object = None

    def filters_continue(self) -> None:
        self.events.append("continue")

    def response_continue(self) -> None:
        self.events.append("response continue")

    def filter_reply(self, status: int, body: bytes) -> None:
        self.events.append((status, body))

    def filter_error(self, name: str) -> None:
        self.errors.append(name)


class Scripted(HttpFilter):
    """Answers each hook from a script and logs what it saw."""

    __slots__ = ("log", "script", "tag")

    def __init__(self, tag: str, script: dict[str, object], log: list[str]) -> None:
        self.tag = tag
        self.script = script
        self.log = log

    def _do(self, hook: str, stream: FilterStream) -> int:
        self.log.append(f"{self.tag}.{hook}")
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

    def on_response_head(self, stream: FilterStream, head: ResponseHead) -> int:
        return self._do("resp", stream)

    def on_request_data(self, stream: FilterStream, data: bytes, end: bool) -> int:
        self.log.append(f"{self.tag}.data={data.decode()}")
        return int(self.script.get("data", CONTINUE))  # type: ignore[call-overload]

    def on_done(self, stream: FilterStream) -> None:
        self.log.append(f"{self.tag}.done")


@dataclass
class Factory:
    name: str
    tag: str
    script: dict[str, object]
    log: list[str]
    filter_type: type[HttpFilter] = Scripted
    stateless: bool = False

    def create(self) -> HttpFilter:
        return Scripted(self.tag, self.script, self.log)


def head() -> RequestHead:
    return RequestHead(b"GET", b"/", b"svc", b"http", [(b"a", b"1")])


def make(*specs: tuple[str, str, dict[str, object]], limit: int = 1 << 20
         ) -> tuple[Chain, list[str]]:
    log: list[str] = []
    chain = build_chain([Factory(n, t, s, log) for n, t, s in specs], limit)
    assert chain is not None
    return chain, log


def test_no_filters_no_chain() -> None:
    assert build_chain([]) is None


def test_order_is_declared_once_with_a_reason_each_and_ends_before_the_router() -> None:
    names = [n for n, _ in ORDER]
    assert names == ["authz", "rate_limit", "fault", "redirect", "rewrite", "headers", "mirror",
                     "session"]
    assert all(len(why) > 20 for _, why in ORDER)


def test_filters_run_in_declared_order_not_config_order_and_responses_in_reverse() -> None:
    chain, log = make(("headers", "h", {}), ("authz", "a", {}), ("headers", "h2", {}))
    port = Port()
    run = ChainRun(chain, head(), port, port)
    assert run.request_head() is True
    assert run.response_head(ResponseHead(200, [])) is True
    run.done()
    run.done()  # once only
    assert log == ["a.req", "h.req", "h2.req", "h2.resp", "h.resp", "a.resp",
                   "a.done", "h.done", "h2.done"]
    assert port.events == []  # a synchronous pass needs no callback


def test_stop_then_resume_continues_with_the_next_filter_and_calls_the_port() -> None:
    chain, log = make(("authz", "a", {"req": STOP}), ("headers", "h", {}))
    port = Port()
    run = ChainRun(chain, head(), port, port)
    assert run.request_head() is False
    assert log == ["a.req"] and port.events == []
    run.resume()
    assert log == ["a.req", "h.req"] and port.events == ["continue"]
    run.resume()  # a second resume is a no-op
    assert port.events == ["continue"]


def test_resume_after_the_request_ended_does_nothing() -> None:
    chain, log = make(("fault", "f", {"req": STOP}), ("headers", "h", {}))
    port = Port()
    run = ChainRun(chain, head(), port, port)
    run.request_head()
    run.done()  # the client went away while the filter waited
    run.resume()
    assert port.events == [] and "h.req" not in log


def test_local_reply_stops_the_chain_and_is_rendered_once_after_the_hook() -> None:
    chain, log = make(("authz", "a", {"req": (403, b"denied\n")}), ("headers", "h", {}))
    port = Port()
    run = ChainRun(chain, head(), port, port)
    assert run.request_head() is False
    assert port.events == [(403, b"denied\n")] and log == ["a.req"]
    run.reply(500, b"again")  # a second answer is ignored
    assert port.events == [(403, b"denied\n")]


def test_a_stopped_filter_may_answer_later() -> None:
    chain, _ = make(("authz", "a", {"req": STOP}))
    port = Port()
    run = ChainRun(chain, head(), port, port)
    run.request_head()
    run.reply(429, b"later\n")
    run.resume()
    assert port.events == [(429, b"later\n")]


def test_local_reply_on_the_response_head() -> None:
    chain, _ = make(("headers", "h", {"resp": (502, b"bad origin\n")}))
    port = Port()
    run = ChainRun(chain, head(), port, port)
    assert run.request_head() is True
    assert run.response_head(ResponseHead(200, [])) is False
    assert port.events == [(502, b"bad origin\n")]


@pytest.mark.parametrize("hook", ["req", "resp"])
def test_an_exception_is_a_500_and_counted_never_raised(hook: str) -> None:
    chain, log = make(("authz", "a", {}), ("headers", "h", {hook: "raise"}))
    port = Port()
    run = ChainRun(chain, head(), port, port)
    ok = run.request_head() and run.response_head(ResponseHead(200, []))
    assert ok is False
    assert port.events == [(500, b"filter error\n")]
    assert port.errors == ["headers"]
    run.done()
    assert log[-2:] == ["a.done", "h.done"]


def test_stop_on_the_response_head_resumes_with_the_filter_before_it() -> None:
    chain, log = make(("authz", "a", {}), ("headers", "h", {"resp": STOP}))
    port = Port()
    run = ChainRun(chain, head(), port, port)
    run.request_head()
    assert run.response_head(ResponseHead(200, [])) is False
    assert log == ["a.req", "h.req", "h.resp"] and port.events == []
    run.resume()
    assert log[-1] == "a.resp" and port.events == ["response continue"]
    run.resume()  # a second resume is a no-op
    assert port.events == ["response continue"]


def test_buffer_holds_chunks_until_the_filter_lets_them_go() -> None:
    script: dict[str, object] = {"data": BUFFER}
    chain, log = make(("authz", "a", {}), ("headers", "h", script))
    port = Port()
    run = ChainRun(chain, head(), port, port)
    assert run.request_data(b"ab", False) is None
    assert run.request_data(b"cd", False) is None
    script["data"] = CONTINUE
    assert run.request_data(b"ef", False) == b"abcdef"
    assert log == ["a.data=ab", "h.data=ab", "a.data=cd", "h.data=abcd", "a.data=ef",
                   "h.data=abcdef"]
    assert run.request_data(b"gh", True) == b"gh"


def test_buffering_past_the_bound_is_answered_413() -> None:
    chain, _ = make(("headers", "h", {"data": BUFFER}), limit=5)
    port = Port()
    run = ChainRun(chain, head(), port, port)
    assert run.request_data(b"abc", False) is None
    assert run.request_data(b"def", False) is None
    assert port.events == [(413, b"filter buffer limit exceeded\n")]


def test_buffer_at_end_of_stream_lets_everything_through() -> None:
    chain, _ = make(("headers", "h", {"data": BUFFER}))
    port = Port()
    run = ChainRun(chain, head(), port, port)
    assert run.request_data(b"ab", False) is None
    assert run.request_data(b"cd", True) == b"abcd"


def test_a_chain_of_header_modifiers_only_is_applied_as_edits_in_chain_order() -> None:
    """Header modifiers are pure header-list edits: their chain is `edits_only` and the stream
    applies the edits itself (requests first to last, responses last to first), as the hooks
    would; any other filter in the chain makes it a normal one."""
    from tulle.dataplane.filters import factory_for
    from tulle.proxyconfig.filters import RequestHeaderModifier, ResponseHeaderModifier
    from tulle.proxyconfig.filters.headers import HTTPHeader

    def req(v: str) -> RequestHeaderModifier:
        return RequestHeaderModifier(add=[HTTPHeader(name="x-req", value=v)])

    def resp(v: str) -> ResponseHeaderModifier:
        return ResponseHeaderModifier(add=[HTTPHeader(name="x-resp", value=v)])

    chain = build_chain([factory_for(f) for f in (req("1"), resp("a"), req("2"), resp("b"))])
    assert chain is not None and chain.edits_only
    headers: list[tuple[bytes, bytes]] = []
    for edit in chain.request_edits:
        edit(headers)
    assert headers == [(b"x-req", b"1"), (b"x-req", b"2")]
    headers = []
    for edit in chain.response_edits:
        edit(headers)
    assert headers == [(b"x-resp", b"b"), (b"x-resp", b"a")]

    @dataclass
    class Other:
        name: str = "fault"
        filter_type: type[HttpFilter] = HttpFilter
        stateless: bool = True

        def create(self) -> HttpFilter:
            return HttpFilter()

    mixed = build_chain([factory_for(req("1")), Other()])
    assert mixed is not None and not mixed.edits_only
