"""SessionPersistence on a scripted stream: the token a response gets, the endpoint a request
that brings it back prefers, and every token that must be ignored."""

from __future__ import annotations

from typing import Any

from tulle.dataplane.exchange import RequestHead, ResponseHead
from tulle.dataplane.filters import factory_for
from tulle.dataplane.filters.session import SessionFactory
from tulle.dataplane.filters.session_token import cookie_value, decode, encode, endpoint_id
from tulle.dataplane.http.chain import ChainRun, build_chain
from tulle.dataplane.upstream.lb import EndpointState
from tulle.proxyconfig.filters import SessionPersistence

NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.t = NOW

    def __call__(self) -> float:
        return self.t


class Runtime:
    def __init__(self, *keys: str) -> None:
        self.endpoints = [EndpointState(k.split(":")[0], int(k.split(":")[1])) for k in keys]


class Port:
    """The request stream's side: clusters, the pin, the record."""

    def __init__(self, clusters: dict[str, Runtime]) -> None:
        self.clusters = clusters
        self.bodiless = True
        self.pinned: tuple[str, EndpointState] | None = None
        self.cluster = "a"
        self.upstream_host = ""

    def upstream_cluster(self, name: str) -> Any:
        return self.clusters.get(name)

    def prefer_endpoint(self, cluster: str, endpoint: EndpointState) -> None:
        self.pinned = (cluster, endpoint)

    def filter_error(self, name: str) -> None:
        raise AssertionError(name)


def run(factory: SessionFactory, port: Port, headers: list[tuple[bytes, bytes]],
        answered_by: tuple[str, str] | None) -> list[tuple[bytes, bytes]]:
    """One request through the filter; the response headers it ends with."""
    chain = build_chain([factory])
    assert chain is not None
    run_ = ChainRun(chain, RequestHead(b"GET", b"/cart", b"shop", b"http", headers), port, port)
    assert run_.request_head() is True
    resp = ResponseHead(200, [(b"content-length", b"0")])
    if answered_by is not None:
        port.cluster, port.upstream_host = answered_by
    assert run_.response_head(resp) is True
    return resp.headers


def cookie_of(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    sets = [v for n, v in headers if n == b"set-cookie"]
    assert len(sets) <= 1
    return sets[0] if sets else None


def factory(clock: Clock, **kw: Any) -> SessionFactory:
    f = factory_for(SessionPersistence(name=kw.pop("name", "sid"), **kw), (), ("a", "b"))
    assert isinstance(f, SessionFactory)
    f.clock = clock
    return f


def test_a_new_session_gets_a_cookie_naming_the_endpoint_that_answered() -> None:
    clock = Clock()
    f = factory(clock, path="/cart")
    port = Port({"a": Runtime("10.0.0.1:80", "10.0.0.2:80")})
    headers = run(f, port, [], ("a", "10.0.0.2:80"))
    assert port.pinned is None  # nothing to prefer: balanced as usual
    line = cookie_of(headers)
    assert line is not None and line.startswith(b"sid=")
    value, *attrs = line.split(b"; ")
    assert attrs == [b"Path=/cart", b"HttpOnly"]  # a session cookie: no Max-Age
    tok = decode(value.split(b"=", 1)[1], NOW)
    assert tok is not None and tok.endpoint == endpoint_id("a", "10.0.0.2:80")
    assert (tok.idle_expiry, tok.absolute_expiry) == (0, 0)


def test_the_cookie_brings_the_request_back_to_its_endpoint_without_a_new_cookie() -> None:
    clock = Clock()
    f = factory(clock)
    rt = Runtime("10.0.0.1:80", "10.0.0.2:80")
    port = Port({"a": rt})
    tok = encode(endpoint_id("a", "10.0.0.2:80"), 0, 0)
    headers = run(f, port, [(b"cookie", b"x=1; sid=" + tok)], ("a", "10.0.0.2:80"))
    assert port.pinned == ("a", rt.endpoints[1])
    assert cookie_of(headers) is None  # the client's cookie is still right


def test_an_endpoint_of_another_backend_of_the_rule_pins_that_cluster() -> None:
    f = factory(Clock())
    b = Runtime("10.0.1.1:80")
    port = Port({"a": Runtime("10.0.0.1:80"), "b": b})
    run(f, port, [(b"cookie", b"sid=" + encode(endpoint_id("b", "10.0.1.1:80"), 0, 0))], None)
    assert port.pinned == ("b", b.endpoints[0])


def test_tokens_that_name_nothing_current_are_ignored_and_replaced() -> None:
    clock = Clock()
    f = factory(clock)
    rt = Runtime("10.0.0.1:80", "10.0.0.2:80")
    port = Port({"a": rt, "c": Runtime("10.0.9.9:80")})
    for value in (b"garbage", b"A" * 4096,
                  encode(endpoint_id("c", "10.0.9.9:80"), 0, 0),  # not a backend of the rule
                  encode(endpoint_id("a", "10.0.0.3:80"), 0, 0),  # not an endpoint (any more)
                  encode(endpoint_id("a", "10.0.0.2:80"), int(NOW) - 1, 0)):  # expired
        port.pinned = None
        headers = run(f, port, [(b"cookie", b"sid=" + value)], ("a", "10.0.0.1:80"))
        assert port.pinned is None, value
        line = cookie_of(headers)
        assert line is not None
        new = decode(line.split(b"; ")[0].split(b"=", 1)[1], NOW)
        assert new is not None and new.endpoint == endpoint_id("a", "10.0.0.1:80")


def test_an_endpoint_that_left_the_cluster_is_not_preferred() -> None:
    f = factory(Clock())
    rt = Runtime("10.0.0.1:80", "10.0.0.2:80")
    port = Port({"a": rt})
    tok = encode(endpoint_id("a", "10.0.0.2:80"), 0, 0)
    run(f, port, [(b"cookie", b"sid=" + tok)], None)
    assert port.pinned is not None
    rt.endpoints = rt.endpoints[:1]  # an endpoint update replaces the list
    port.pinned = None
    run(f, port, [(b"cookie", b"sid=" + tok)], None)
    assert port.pinned is None


def test_an_unhealthy_endpoint_is_not_preferred_and_the_answer_gets_a_new_cookie() -> None:
    f = factory(Clock())
    rt = Runtime("10.0.0.1:80", "10.0.0.2:80")
    rt.endpoints[1].healthy = False
    port = Port({"a": rt})
    headers = run(f, port, [(b"cookie", b"sid=" + encode(endpoint_id("a", "10.0.0.2:80"), 0, 0))],
                  ("a", "10.0.0.1:80"))
    assert port.pinned is None and cookie_of(headers) is not None


def test_idle_timeout_refreshes_and_absolute_timeout_never_moves() -> None:
    clock = Clock()
    f = factory(clock, idle_timeout_ms=60_000, absolute_timeout_ms=3_600_000)
    port = Port({"a": Runtime("10.0.0.1:80")})
    first = cookie_of(run(f, port, [], ("a", "10.0.0.1:80")))
    assert first is not None
    tok1 = decode(first.split(b"; ")[0].split(b"=", 1)[1], NOW)
    assert tok1 is not None
    assert (tok1.idle_expiry, tok1.absolute_expiry) == (int(NOW) + 60, int(NOW) + 3600)
    clock.t += 50  # used within the idle timeout: refreshed
    value = first.split(b"; ")[0].split(b"=", 1)[1]
    again = cookie_of(run(f, port, [(b"cookie", b"sid=" + value)], ("a", "10.0.0.1:80")))
    assert port.pinned is not None and again is not None
    tok2 = decode(again.split(b"; ")[0].split(b"=", 1)[1], clock.t)
    assert tok2 is not None
    assert (tok2.idle_expiry, tok2.absolute_expiry) == (int(clock.t) + 60, int(NOW) + 3600)
    clock.t += 61  # idle too long with the first token: a new session
    port.pinned = None
    run(f, port, [(b"cookie", b"sid=" + value)], ("a", "10.0.0.1:80"))
    assert port.pinned is None


def test_a_permanent_cookie_has_max_age() -> None:
    f = factory(Clock(), permanent=True, absolute_timeout_ms=7_200_000)
    line = cookie_of(run(f, Port({"a": Runtime("10.0.0.1:80")}), [], ("a", "10.0.0.1:80")))
    assert line is not None and line.endswith(b"; Path=/; HttpOnly; Max-Age=7200")


def test_a_header_session_reads_and_replaces_its_header() -> None:
    f = factory(Clock(), kind="Header", name="X-Session")
    rt = Runtime("10.0.0.1:80", "10.0.0.2:80")
    port = Port({"a": rt})
    tok = encode(endpoint_id("a", "10.0.0.2:80"), 0, 0)
    run(f, port, [(b"x-session", tok)], None)
    assert port.pinned == ("a", rt.endpoints[1])
    chain = build_chain([f])
    assert chain is not None
    port.pinned = None
    r = ChainRun(chain, RequestHead(b"GET", b"/", b"shop", b"http", []), port, port)
    assert r.request_head()
    resp = ResponseHead(200, [(b"x-session", b"from-the-app")])
    port.cluster, port.upstream_host = "a", "10.0.0.1:80"
    assert r.response_head(resp)
    (value,) = [v for n, v in resp.headers if n == b"x-session"]
    got = decode(value, NOW)
    assert got is not None and got.endpoint == endpoint_id("a", "10.0.0.1:80")
    assert cookie_value(b"sid=" + value, b"sid") == value


def test_a_local_reply_gets_no_token() -> None:
    f = factory(Clock())
    assert cookie_of(run(f, Port({"a": Runtime("10.0.0.1:80")}), [], None)) is None


def test_a_flood_of_distinct_tokens_keeps_the_cache_bounded() -> None:
    from tulle.dataplane.filters.session import CACHE

    f = factory(Clock())
    port = Port({"a": Runtime("10.0.0.1:80")})
    for i in range(CACHE + 50):
        f.token(encode(i.to_bytes(8, "big"), 0, 0))
        f.token(b"x" * 10_000 + str(i).encode())  # oversized: refused, never remembered
    assert len(f._tokens) <= CACHE
    assert all(len(k) <= 64 for k in f._tokens)
    run(f, port, [], ("a", "10.0.0.1:80"))  # still serving
