"""An attack on routing's filters and on what routing and authorization see (ADR 0101).

Real proxies on loopback; raw HTTP/1 and HTTP/2 clients that send what a browser would not
(no `Host`, a `:scheme` of their choosing, `:path` shapes), and origins that record what they
receive (`recording_origin`; the `h2`-based origin, which refuses any malformed HTTP/2 field).

Found, each failing before its fix:

* A redirect whose rule sets no hostname, for an HTTP/1.0 request without `Host`, was answered
  `Location: http:///old/evil.com/x`: an `http` URI with an empty host, which RFC 9110 section
  4.2.1 forbids sending and which URL parsers that skip extra slashes (WHATWG, so browsers)
  read as host `old`; `ReplaceFullPath: //evil.com` made it `http:////evil.com`, host
  `evil.com`.  Such a request now gets 400: there is no host to redirect to.
* The same redirect took the scheme of `Location` from an HTTP/2 client's `:scheme`, any
  token: `:scheme: javascript` got `Location: javascript://svc/old/x`.  The request's scheme is
  now used only when it is `http` or `https` (else `http`), and a port an URL cannot have
  (`Host: svc:99999`, `svc:0`) is left out rather than copied.

Held (pinned here): header modifier values with obs-text and a tab, and mixed-case names,
reach a strict HTTP/2 origin and both kinds of client as configured (names lower-cased), and a
`host` field beside `:authority` never reaches an HTTP/1 origin as a second `Host`; a DENY on
`/admin` holds for every `:path` shape an HTTP/2 client can send, as ADR 0045 pinned for
HTTP/1, and absolute or authority-form `:path` is refused.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tests.support.h2peers import running_h2_origin
from tests.support.h2raw import RawH2, request
from tests.support.proxy import running_proxy
from tests.support.rawservers import RawServer, connect, raw_server, read_response_within
from tests.support.recorder import recording_origin

from tulle.dataplane.filters.mirror import MAX_BODY

DENY_ADMIN = {"type": "Authorization", "policies": [
    {"name": "shop/no-admin", "action": "DENY",
     "rules": [{"operations": [{"paths": ["/admin", "/admin/*"]}]}]}]}
"""What the compiler puts first on every rule of an inbound port (`compiler/proxies.py`)."""


def config(origin: int) -> dict[str, Any]:
    return {
        "listeners": [{"name": "out", "port": 0, "protocol": "auto", "route_table": "rt"}],
        "clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1", "port": origin}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/old"}}],
             "backends": [{"cluster": "c"}],
             "filters": [{"type": "RequestRedirect", "status_code": 302}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/full"}}],
             "backends": [{"cluster": "c"}],
             "filters": [{"type": "RequestRedirect", "status_code": 301,
                          "path": {"type": "ReplaceFullPath", "value": "//evil.com/x"}}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/admin"}}],
             "backends": [{"cluster": "c"}], "filters": [DENY_ADMIN]},
            {"backends": [{"cluster": "c"}], "filters": [DENY_ADMIN]},
        ]}]}],
    }


async def h1(port: int, wire: bytes) -> tuple[int, bytes | None]:
    r, w = await connect(port)
    try:
        w.write(wire)
        resp = await read_response_within(r)
        return resp.status, resp.header(b"location")
    finally:
        w.close()


async def h2(c: RawH2, fields: list[tuple[bytes, bytes]]) -> tuple[int | None, bytes | None]:
    """(status or None when reset, the `location` field) of one request on `c`."""
    sid = c.headers(fields)
    await c.wait_stream(sid)
    loc = [v for n, v in c.fields.get(sid, []) if n == b"location"]
    return c.status.get(sid), (loc[0] if loc else None)


def fields(scheme: bytes, authority: bytes | None, path: bytes,
           extra: tuple[tuple[bytes, bytes], ...] = ()) -> list[tuple[bytes, bytes]]:
    out = [(b":method", b"GET"), (b":scheme", scheme)]
    if authority is not None:
        out.append((b":authority", authority))
    return [*out, (b":path", path), *extra]


# -- RequestRedirect: what `Location` is built from ------------------------------------------

@pytest.mark.parametrize("target", [b"/old/evil.com/x", b"/old//evil.com/x", b"/full/y"])
async def test_a_redirect_with_no_host_to_name_is_refused_not_sent_with_an_empty_host(
        target: bytes) -> None:
    async with recording_origin() as o, running_proxy(config(o.port)) as p:
        status, location = await h1(p.port(), b"GET %b HTTP/1.0\r\n\r\n" % target)
        assert (status, location) == (400, None)
        # ... while a request naming its host is redirected there, whatever its path holds.
        status, location = await h1(p.port(), b"GET %b HTTP/1.0\r\nHost: svc\r\n\r\n" % target)
        assert status in (301, 302)
        assert location is not None and location.startswith(b"http://svc/"), location
        assert o.requests == []


async def test_a_redirect_takes_only_http_or_https_from_the_requests_scheme() -> None:
    async with recording_origin() as o, running_proxy(config(o.port)) as p:
        c = await RawH2.connect(p.port())
        try:
            for scheme, location in ((b"javascript", b"http://svc/old/x"),
                                     (b"data", b"http://svc/old/x"),
                                     (b"HTTPS", b"https://svc/old/x"),
                                     (b"https", b"https://svc/old/x"),
                                     (b"http", b"http://svc/old/x")):
                assert await h2(c, fields(scheme, b"svc", b"/old/x")) == (302, location), scheme
        finally:
            c.close()
        assert o.requests == []


async def test_a_redirect_names_the_authority_it_was_routed_by() -> None:
    """Held: a `host` field beside `:authority` does not become the redirect's host, two of
    them without `:authority` are refused, and a backslash is a slash by then (routing's
    normalisation runs first)."""
    async with recording_origin() as o, running_proxy(config(o.port)) as p:
        c = await RawH2.connect(p.port())
        try:
            assert await h2(c, fields(b"http", b"svc", b"/old/x", ((b"host", b"evil.com"),))) \
                == (302, b"http://svc/old/x")
            assert (await h2(c, fields(b"http", None, b"/old/x",
                                       ((b"host", b"evil.com"), (b"host", b"svc")))))[0] is None
            assert await h2(c, fields(b"http", b"svc", b"/old/\\evil.com")) == (
                302, b"http://svc/old//evil.com")
        finally:
            c.close()
        assert o.requests == []


@pytest.mark.parametrize(("host", "location"), [
    (b"svc:99999", b"http://svc/old/x"), (b"svc:0", b"http://svc/old/x"),
    (b"svc:00080", b"http://svc/old/x"), (b"svc:8080", b"http://svc:8080/old/x"),
    (b"[::1]:8080", b"http://[::1]:8080/old/x")])
async def test_a_redirect_copies_only_a_port_an_url_can_have(host: bytes,
                                                             location: bytes) -> None:
    async with recording_origin() as o, running_proxy(config(o.port)) as p:
        wire = b"GET /old/x HTTP/1.1\r\nHost: %b\r\n\r\n" % host
        assert await h1(p.port(), wire) == (302, location)


# -- URLRewrite / a redirect's path: what the new path can become ----------------------------

def rewrite_config(origin: int) -> dict[str, Any]:
    return {
        "listeners": [{"name": "out", "port": 0, "protocol": "auto", "route_table": "rt"}],
        "clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1", "port": origin}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/foo"}}],
             "backends": [{"cluster": "c"}],
             "filters": [{"type": "URLRewrite",
                          "path": {"type": "ReplacePrefixMatch", "value": "/"}}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/go"}}],
             "backends": [{"cluster": "c"}],
             "filters": [{"type": "RequestRedirect",
                          "path": {"type": "ReplacePrefixMatch", "value": "/"}}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}, "method": "OPTIONS"}],
             "backends": [{"cluster": "c"}],
             "filters": [{"type": "RequestRedirect", "scheme": "https"}]},
            {"backends": [{"cluster": "c"}],
             "filters": [{"type": "URLRewrite", "hostname": "api.internal",
                          "path": {"type": "ReplacePrefixMatch", "value": "/v2"}}]},
        ]}]}],
    }


@pytest.mark.parametrize(("target", "upstream"), [
    (b"/foo//evil.com/x", b"/evil.com/x"), (b"/foo///evil.com", b"/evil.com"),
    (b"/foo/x//y", b"/x//y"), (b"/foo", b"/"), (b"/foo/?q=//a", b"/?q=//a"),
    (b"//evil.com", b"/v2//evil.com")])
async def test_a_prefix_replaced_by_slash_never_leaves_a_path_that_begins_with_two(
        target: bytes, upstream: bytes) -> None:
    """`/foo//evil.com` was sent upstream as `//evil.com`: a path no request to this route
    table could otherwise give the application, read as a scheme-relative URL by code that
    redirects to its own path.  The slashes after a prefix replaced by one ending in `/` are
    taken as that one (as Envoy Gateway's `^/foo/*` rewrite does)."""
    async with recording_origin() as o, running_proxy(rewrite_config(o.port)) as p:
        assert (await h1(p.port(), b"GET %b HTTP/1.1\r\nHost: svc\r\n\r\n" % target))[0] == 200
        assert [r.target for r in o.requests] == [upstream]
        go = target.replace(b"/foo", b"/go", 1)
        if go != target:
            status, location = await h1(p.port(), b"GET %b HTTP/1.1\r\nHost: svc\r\n\r\n" % go)
            assert (status, location) == (302, b"http://svc" + upstream)


async def test_an_asterisk_target_is_not_a_path_to_rewrite_or_redirect_to() -> None:
    """`OPTIONS *` (RFC 9112 section 3.2.4) has no path: a prefix rewrite made it `OPTIONS
    /v2*`, another request, and a catch-all redirect answered `Location: https://svc*`, a URL
    whose host is `svc*`.  The rewrite now leaves `*` alone (the hostname still applies), and
    a redirect of it points at the root."""
    cfg = rewrite_config(0)
    cfg["route_tables"][0]["virtual_hosts"][0]["rules"].pop(2)  # (no OPTIONS redirect)
    async with recording_origin() as o:
        cfg["clusters"][0]["endpoints"][0]["port"] = o.port
        async with running_proxy(cfg) as p:
            assert (await h1(p.port(), b"OPTIONS * HTTP/1.1\r\nHost: svc\r\n\r\n"))[0] == 200
            (seen,) = o.requests
            assert (seen.method, seen.target, seen.header(b"host")) == (
                b"OPTIONS", b"*", b"api.internal")
        async with running_proxy(rewrite_config(o.port)) as p:
            assert await h1(p.port(), b"OPTIONS * HTTP/1.1\r\nHost: svc\r\n\r\n") == (
                302, b"https://svc/")


# -- RequestMirror: a mirror that never reads (held) ----------------------------------------

async def never_reads(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Accepts and then reads nothing more: the copies' bodies fill its TCP window."""
    await asyncio.Event().wait()


async def test_a_mirror_that_never_reads_bodies_does_not_delay_the_requests_it_copies() -> None:
    cfg = config(0)
    cfg["clusters"].append({"name": "m", "endpoints": [{"address": "127.0.0.1", "port": 0}]})
    cfg["route_tables"][0]["virtual_hosts"][0]["rules"].insert(0, {
        "matches": [{"path": {"type": "PathPrefix", "value": "/m"}}],
        "backends": [{"cluster": "c"}], "filters": [{"type": "RequestMirror", "cluster": "m"}]})
    body = b"b" * (MAX_BODY - 100)
    async with recording_origin() as o, raw_server(never_reads) as m:
        cfg["clusters"][0]["endpoints"][0]["port"] = o.port
        cfg["clusters"][1]["endpoints"][0]["port"] = m.port
        async with running_proxy(cfg) as p:
            r, w = await connect(p.port())
            for i in range(24):
                w.write(b"POST /m/%d HTTP/1.1\r\nHost: svc\r\ncontent-length: %d\r\n\r\n%b"
                        % (i, len(body), body))
                assert (await read_response_within(r)).status == 200, i
            too_big = body + b"x" * 200  # declared past MAX_BODY: never mirrored
            w.write(b"POST /m/big HTTP/1.1\r\nHost: svc\r\ncontent-length: %d\r\n\r\n%b"
                    % (len(too_big), too_big))
            assert (await read_response_within(r)).status == 200
            w.close()
            assert [len(s.body) for s in o.requests] == [len(body)] * 24 + [len(too_big)]
            assert p.metric("tulle_proxy_mirror_requests_total", outcome="sent") == 24
            assert p.metric("tulle_proxy_mirror_requests_total", outcome="dropped") == 1


# -- Header modifiers: what a config can make the proxy send (held) --------------------------

VALUE = "caf\u00e9\u0085\tx"
"""obs-text (UTF-8 of U+00E9 and U+0085) and an inner tab: valid field content."""


def modifier_config(origin: int) -> dict[str, Any]:
    return {
        "listeners": [{"name": "out", "port": 0, "protocol": "auto", "route_table": "rt"}],
        "clusters": [{"name": "c", "protocol": "http2",
                      "endpoints": [{"address": "127.0.0.1", "port": origin}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": [
            {"backends": [{"cluster": "c"}], "filters": [
                {"type": "RequestHeaderModifier", "set": [{"name": "X-Up", "value": VALUE}]},
                {"type": "ResponseHeaderModifier", "add": [{"name": "X-Down",
                                                           "value": VALUE}]}]}]}]}],
    }


async def test_header_modifiers_reach_strict_peers_of_both_protocols_as_configured() -> None:
    sent = VALUE.encode()
    async with running_h2_origin() as (port, origin), \
            running_proxy(modifier_config(port)) as p:
        r, w = await connect(p.port())
        w.write(b"GET /echo HTTP/1.1\r\nHost: svc\r\n\r\n")
        resp = await read_response_within(r)
        w.close()
        assert resp.status == 200 and resp.header(b"x-down") == sent
        assert b'"x-up": "caf\\u00e9\\u0085\\tx"' in resp.body  # (the h2 origin's JSON echo)
        c = await RawH2.connect(p.port())
        try:
            sid = c.headers(request("GET", "/echo", "svc"))
            await c.wait_stream(sid)
            assert c.status[sid] == 200 and sid not in c.resets
            assert (b"x-down", sent) in c.fields[sid]
            assert b'"x-up": "caf\\u00e9\\u0085\\tx"' in bytes(c.body[sid])
        finally:
            c.close()
        assert origin.requests == 2


async def test_a_host_field_beside_authority_never_reaches_an_http1_origin() -> None:
    async with recording_origin() as o, running_proxy(config(o.port)) as p:
        c = await RawH2.connect(p.port())
        try:
            got = await h2(c, fields(b"http", b"public", b"/x", ((b"host", b"admin"),)))
        finally:
            c.close()
        assert got == (200, None)
        (seen,) = o.requests  # routed by `:authority`, and that is the one Host it carries
        assert [v for n, v in seen.headers if n.lower() == b"host"] == [b"public"]


# -- Routing and authorization see one path (held) ------------------------------------------

ADMIN_SHAPES = [b"/admin", b"/admin/x", b"//admin", b"/./admin", b"/x/../admin",
                b"/%61dmin", b"/admin;x", b"/admin/;x/y", b"/p/..;/admin", b"/admin%2Fx",
                b"/admin%2f", b"/admin\\x", b"/x/%2e%2e/admin", b"/admin?x=/public",
                b"/admin#frag", b"/ad%6din/x", b"\\admin"]


@pytest.mark.parametrize("path", ADMIN_SHAPES)
async def test_a_deny_holds_for_every_http2_path_shape(path: bytes) -> None:
    async with recording_origin() as o, running_proxy(config(o.port)) as p:
        c = await RawH2.connect(p.port())
        try:
            status, _ = await h2(c, fields(b"http", b"svc", path))
            assert status in (None, 400, 403), (path, status)  # reset, refused or denied
            # The same connection still serves (one refused stream is not a dead connection).
            assert (await h2(c, fields(b"http", b"svc", b"/public")))[0] == 200
        finally:
            c.close()
        assert [s.target for s in o.requests] == [b"/public"]


@pytest.mark.parametrize("path", [b"http://svc/admin", b"svc:80", b"admin", b"*"])
async def test_http2_path_not_in_origin_form_is_refused(path: bytes) -> None:
    async with recording_origin() as o, running_proxy(config(o.port)) as p:
        c = await RawH2.connect(p.port())
        try:
            status, _ = await h2(c, fields(b"http", b"svc", path))
        finally:
            c.close()
        assert status in (None, 400), (path, status)
        assert o.requests == []


async def test_the_same_shapes_over_http1_absolute_form_included() -> None:
    async with recording_origin() as o, running_proxy(config(o.port)) as p:
        for path in [*ADMIN_SHAPES, b"http://other/admin", b"http://svc//admin"]:
            status, _ = await h1(p.port(), b"GET %b HTTP/1.1\r\nHost: svc\r\n\r\n" % path)
            assert status in (400, 403), (path, status)
        assert o.requests == []
