"""RequestRedirect on real heads: `Location` per Gateway API, answered locally, nothing sent on."""

from __future__ import annotations

import pytest

from tulle.dataplane.exchange import RequestHead
from tulle.dataplane.filters import factory_for
from tulle.dataplane.http.chain import ChainRun, build_chain
from tulle.proxyconfig.filters import RequestRedirect
from tulle.proxyconfig.filters.paths import PathModifier
from tulle.proxyconfig.model import HeaderMatch, PathMatch, RouteMatch


class Port:
    def __init__(self) -> None:
        self.replies: list[tuple[int, bytes, tuple[tuple[bytes, bytes], ...]]] = []

    def filters_continue(self) -> None:
        raise AssertionError("a redirect never continues")

    def filter_reply(self, status: int, body: bytes,
                     headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.replies.append((status, body, headers))

    def filter_error(self, name: str) -> None:
        raise AssertionError(name)


def redirect(cfg: RequestRedirect, path: bytes = b"/a/b?q=1", authority: bytes = b"svc",
             scheme: bytes = b"http", matches: list[RouteMatch] | None = None,
             headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, bytes]:
    chain = build_chain([factory_for(cfg, matches or [RouteMatch()])])
    assert chain is not None
    p = Port()
    head = RequestHead(b"GET", path, authority, scheme, headers or [])
    assert ChainRun(chain, head, p, p).request_head() is False
    ((status, body, fields),) = p.replies
    assert body == b"" and [n for n, _ in fields] == [b"location"]
    return status, fields[0][1]


def prefix(value: str) -> PathModifier:
    return PathModifier(type="ReplacePrefixMatch", value=value)


def test_defaults_keep_the_url_and_answer_302() -> None:
    assert redirect(RequestRedirect()) == (302, b"http://svc/a/b?q=1")


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_status_codes(code: int) -> None:
    assert redirect(RequestRedirect(status_code=code))[0] == code  # type: ignore[arg-type]


@pytest.mark.parametrize(("cfg", "authority", "location"), [
    # scheme set, port unset: the scheme's well-known port, left out
    (RequestRedirect(scheme="https"), b"svc:8080", b"https://svc/a/b?q=1"),
    (RequestRedirect(scheme="http"), b"svc:8443", b"http://svc/a/b?q=1"),
    # nothing set: the port the client named is kept unless it is the scheme's default
    (RequestRedirect(), b"svc:8080", b"http://svc:8080/a/b?q=1"),
    (RequestRedirect(), b"svc:80", b"http://svc/a/b?q=1"),
    # port set: kept unless it is the scheme's well-known one
    (RequestRedirect(scheme="https", port=443), b"svc", b"https://svc/a/b?q=1"),
    (RequestRedirect(scheme="https", port=8443), b"svc", b"https://svc:8443/a/b?q=1"),
    (RequestRedirect(port=80), b"svc:9000", b"http://svc/a/b?q=1"),
    (RequestRedirect(hostname="other.example", port=81), b"svc:9000",
     b"http://other.example:81/a/b?q=1"),
    (RequestRedirect(hostname="v6.example"), b"[::1]:8080", b"http://v6.example:8080/a/b?q=1"),
    (RequestRedirect(), b"[::1]:8080", b"http://[::1]:8080/a/b?q=1"),
])
def test_scheme_host_and_port(cfg: RequestRedirect, authority: bytes, location: bytes) -> None:
    assert redirect(cfg, authority=authority)[1] == location


def test_the_request_scheme_is_kept() -> None:
    assert redirect(RequestRedirect(), scheme=b"https", authority=b"svc:443")[1] == (
        b"https://svc/a/b?q=1")


def test_full_path_replacement_keeps_the_query() -> None:
    cfg = RequestRedirect(path=PathModifier(type="ReplaceFullPath", value="/new"))
    assert redirect(cfg)[1] == b"http://svc/new?q=1"
    assert redirect(cfg, path=b"/x")[1] == b"http://svc/new"


@pytest.mark.parametrize(("match", "value", "path", "out"), [
    ("/foo", "/bar", b"/foo", b"/bar"),
    ("/foo", "/bar", b"/foo/x", b"/bar/x"),
    ("/foo/", "/bar", b"/foo/x/y", b"/bar/x/y"),
    ("/foo", "/bar/", b"/foo/x", b"/bar/x"),
    ("/foo", "/", b"/foo/x", b"/x"),
    ("/foo", "/", b"/foo", b"/"),
    ("/foo", "/bar", b"/foo/", b"/bar/"),
    ("/", "/bar", b"/x/y", b"/bar/x/y"),
    ("/", "/", b"/x", b"/x"),
])
def test_prefix_replacement_is_segment_aware(match: str, value: str, path: bytes,
                                             out: bytes) -> None:
    m = [RouteMatch(path=PathMatch(type="PathPrefix", value=match))]
    assert redirect(RequestRedirect(path=prefix(value)), path=path, matches=m)[1] == (
        b"http://svc" + out)


def test_the_prefix_replaced_is_the_one_that_matched() -> None:
    m = [RouteMatch(path=PathMatch(value="/api"),
                    headers=[HeaderMatch(name="x-v", value="2")]),
         RouteMatch(path=PathMatch(value="/api/v1"))]
    cfg = RequestRedirect(path=prefix("/new"))
    # the longer prefix is the router's first choice ...
    assert redirect(cfg, path=b"/api/v1/x", matches=m)[1] == b"http://svc/new/x"
    # ... the shorter one with a header condition matches only where the longer does not
    assert redirect(cfg, path=b"/api/v2/x", matches=m,
                    headers=[(b"x-v", b"2")])[1] == b"http://svc/new/v2/x"
