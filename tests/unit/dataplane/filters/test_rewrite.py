"""URLRewrite on real heads: the upstream sees the new authority and path; query kept."""

from __future__ import annotations

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.filters import factory_for
from tulle.dataplane.http.chain import ChainRun, build_chain
from tulle.proxyconfig.filters import RequestHeaderModifier, URLRewrite
from tulle.proxyconfig.filters.headers import HTTPHeader
from tulle.proxyconfig.filters.paths import PathModifier
from tulle.proxyconfig.model import PathMatch, RouteMatch


class Port:
    def filters_continue(self) -> None:
        raise AssertionError("a rewrite never stops")

    def filter_reply(self, status: int, body: bytes) -> None:
        raise AssertionError(f"unexpected reply {status}")

    def filter_error(self, name: str) -> None:
        raise AssertionError(name)


def run(cfgs: list[object], head: RequestHead, matches: list[RouteMatch]) -> None:
    chain = build_chain([factory_for(c, matches) for c in cfgs])  # type: ignore[arg-type]
    assert chain is not None
    p = Port()
    assert ChainRun(chain, head, p, p).request_head() is True


def test_hostname_and_prefix() -> None:
    m = [RouteMatch(path=PathMatch(value="/old"))]
    head = RequestHead(b"GET", b"/old/x?a=b", b"svc:8080", b"http", [])
    run([URLRewrite(hostname="backend.local",
                    path=PathModifier(type="ReplacePrefixMatch", value="/new"))], head, m)
    assert (head.authority, head.path) == (b"backend.local", b"/new/x?a=b")


def test_full_path_only_keeps_the_authority() -> None:
    head = RequestHead(b"GET", b"/anything/at/all", b"svc", b"http", [])
    run([URLRewrite(path=PathModifier(type="ReplaceFullPath", value="/fixed"))], head,
        [RouteMatch()])
    assert (head.authority, head.path) == (b"svc", b"/fixed")


def test_rewrite_runs_before_header_edits_whatever_the_list_order() -> None:
    """Declared order: rewrite, then headers (`http/chain.py`)."""
    head = RequestHead(b"GET", b"/p", b"svc", b"http", [])
    chain = build_chain([factory_for(RequestHeaderModifier(
        add=[HTTPHeader(name="x", value="1")])), factory_for(URLRewrite(hostname="b"))])
    assert chain is not None
    assert [f.name for f in chain.factories] == ["rewrite", "headers"]
    p = Port()
    assert ChainRun(chain, head, p, p).request_head()
    assert head.authority == b"b" and head.headers == [(b"x", b"1")]


def test_stateless_one_instance() -> None:
    f = factory_for(URLRewrite(hostname="b"))
    assert f.stateless and f.create() is f.create()
