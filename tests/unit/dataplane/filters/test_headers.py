"""The header modifiers on real heads: set replaces, add appends, remove drops, names folded."""

from __future__ import annotations

from tulle.dataplane.exchange import RequestHead, ResponseHead
from tulle.dataplane.filters import factory_for
from tulle.dataplane.http.chain import ChainRun, build_chain
from tulle.proxyconfig.filters.headers import (
    HTTPHeader,
    RequestHeaderModifier,
    ResponseHeaderModifier,
)


class Port:
    def filters_continue(self) -> None:
        raise AssertionError("header modifiers never stop")

    def filter_reply(self, status: int, body: bytes) -> None:
        raise AssertionError(f"unexpected reply {status}")

    def filter_error(self, name: str) -> None:
        raise AssertionError(name)


def test_request_set_add_remove_gateway_api_semantics() -> None:
    cfg = RequestHeaderModifier(set=[HTTPHeader(name="X-Env", value="prod")],
                                add=[HTTPHeader(name="X-Tag", value="b")],
                                remove=["X-Secret"])
    chain = build_chain([factory_for(cfg)])
    assert chain is not None
    h = RequestHead(b"GET", b"/", b"svc", b"http",
                    [(b"x-env", b"dev"), (b"x-tag", b"a"), (b"x-secret", b"s"),
                     (b"x-env", b"dev2"), (b"accept", b"*/*")])
    p = Port()
    assert ChainRun(chain, h, p, p).request_head() is True
    assert h.headers == [(b"x-tag", b"a"), (b"accept", b"*/*"), (b"x-env", b"prod"),
                         (b"x-tag", b"b")]


def test_response_modifier_edits_only_the_response() -> None:
    cfg = ResponseHeaderModifier(set=[HTTPHeader(name="Cache-Control", value="no-store")],
                                 remove=["server"])
    chain = build_chain([factory_for(cfg)])
    assert chain is not None
    req = RequestHead(b"GET", b"/", b"svc", b"http", [(b"server", b"kept")])
    resp = ResponseHead(200, [(b"server", b"nginx"), (b"cache-control", b"max-age=9")])
    p = Port()
    run = ChainRun(chain, req, p, p)
    assert run.request_head() and run.response_head(resp)
    assert req.headers == [(b"server", b"kept")]
    assert resp.headers == [(b"cache-control", b"no-store")]


def test_a_stateless_filter_is_shared_between_requests() -> None:
    f = factory_for(RequestHeaderModifier(add=[HTTPHeader(name="a", value="b")]))
    assert f.create() is f.create()
