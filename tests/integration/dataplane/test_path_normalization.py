"""Path traversal through a route that only allows `/public` (the CVE-2019-9901 class).

A real proxy routes the prefix `/public` to cluster `a` and everything else to cluster `b`; each
cluster is a raw origin that records every request head it receives.  For each attack shape,
over HTTP/1.1 and over h2c: the request either reaches `b` with the normalised path or is
refused with 400 (nothing reaches any origin) — it never reaches `a` with a path that resolves
outside `/public`.  Each test checks the exact request line the origin received, the counters,
and that the listener still serves afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.support.h2peers import H2Client
from tests.support.proxy import RunningProxy, running_proxy
from tests.support.rawservers import RawServer, closed_by_peer, connect, raw_server, read_response


async def recording_origin(srv: RawServer, r: asyncio.StreamReader,
                           w: asyncio.StreamWriter) -> None:
    """Keep-alive origin: records each request head, answers 200 with its own port as body."""
    body = str(srv.port).encode()
    while True:
        head = await r.readuntil(b"\r\n\r\n")
        srv.requests.append(head)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(body), body))
        await w.drain()


def config(a: int, b: int, **paths: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "admin": {"port": 0},
        "listeners": [{"name": "out", "port": 0, "protocol": "auto", "route_table": "rt"}],
        "clusters": [
            {"name": "a", "endpoints": [{"address": "127.0.0.1", "port": a}]},
            {"name": "b", "endpoints": [{"address": "127.0.0.1", "port": b}]},
        ],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/public"}}],
             "backends": [{"cluster": "a"}]},
            {"backends": [{"cluster": "b"}]},
        ]}]}],
    }
    if paths:
        cfg["settings"] = {"path_normalization": paths}
    return cfg


class Mesh:
    def __init__(self, p: RunningProxy, a: RawServer, b: RawServer) -> None:
        self.p = p
        self.a = a
        self.b = b

    def received(self) -> tuple[list[bytes], list[bytes]]:
        """The request lines each origin received, (a, b)."""
        return ([h.split(b"\r\n", 1)[0] for h in self.a.requests],
                [h.split(b"\r\n", 1)[0] for h in self.b.requests])

    async def h1(self, target: bytes) -> int:
        r, w = await connect(self.p.port())
        w.write(b"GET %b HTTP/1.1\r\nHost: svc\r\n\r\n" % target)
        resp = await read_response(r)
        if resp.status == 400:
            assert await closed_by_peer(r)
        w.close()
        return resp.status

    async def h2(self, target: bytes) -> int:
        c = await H2Client.connect(self.p.port())
        try:
            resp = await asyncio.wait_for(c.request("GET", target.decode("latin-1")), 10)
            # The connection outlives a refused stream: a second request on it is served.
            ok = await asyncio.wait_for(c.request("GET", "/public/ok"), 10)
            assert ok.status == 200
        finally:
            c.close()
        return resp.status

    async def still_serves(self) -> None:
        before = len(self.a.requests)
        assert await self.h1(b"/public/after") == 200
        assert self.a.requests[before].startswith(b"GET /public/after HTTP/1.1\r\n")


@contextlib.asynccontextmanager
async def mesh(**paths: Any) -> AsyncIterator[Mesh]:
    async with raw_server(recording_origin) as a, raw_server(recording_origin) as b, \
            running_proxy(config(a.port, b.port, **paths)) as p:
        yield Mesh(p, a, b)


# (raw target, the request line's target at origin b) with the default settings.
TO_B = {
    "dotdot": (b"/public/../admin", b"/admin"),
    "dot_dotdot": (b"/public/./../admin", b"/admin"),
    "encoded_dots": (b"/public/%2e%2e/admin", b"/admin"),
    "encoded_dots_upper": (b"/public/%2E%2E/admin", b"/admin"),
    "half_encoded_dots": (b"/public/.%2e/admin", b"/admin"),
    "leading_dot": (b"/./admin", b"/admin"),
    "double_slash": (b"//admin", b"//admin"),
    "backslashes": (b"/public\\..\\admin", b"/admin"),
    "above_root": (b"/public/../../../../admin", b"/admin"),
    "query_kept": (b"/public/../admin?next=/../%2e&x=%zz", b"/admin?next=/../%2e&x=%zz"),
    "encoded_letters": (b"/%70ublic/../%61dmin", b"/admin"),
}

REFUSED = {
    "nul": b"/public/%00/../admin",
    "bad_escape": b"/public/%zz/../admin",
    "truncated_escape": b"/public/..%2",
}


@pytest.mark.parametrize("proto", ["h1", "h2"])
@pytest.mark.parametrize("name", sorted(TO_B))
async def test_traversal_reaches_the_other_cluster_normalised(name: str, proto: str) -> None:
    raw, expected = TO_B[name]
    async with mesh() as m:
        status = await (m.h1(raw) if proto == "h1" else m.h2(raw))
        assert status == 200
        a, b = m.received()
        assert b == [b"GET " + expected + b" HTTP/1.1"]
        assert a == ([] if proto == "h1" else [b"GET /public/ok HTTP/1.1"])
        assert m.p.metric("tulle_proxy_requests_total", cluster="b", response_code="200") == 1
        await m.still_serves()


@pytest.mark.parametrize("proto", ["h1", "h2"])
@pytest.mark.parametrize("name", sorted(REFUSED))
async def test_unsafe_paths_get_400_and_reach_no_origin(name: str, proto: str) -> None:
    async with mesh() as m:
        status = await (m.h1(REFUSED[name]) if proto == "h1" else m.h2(REFUSED[name]))
        assert status == 400
        a, b = m.received()
        assert b == [] and a == ([] if proto == "h1" else [b"GET /public/ok HTTP/1.1"])
        assert m.p.metric("tulle_proxy_protocol_errors_total", kind="invalid_path") == 1
        assert m.p.metric("tulle_proxy_requests_total", response_code="400",
                          response_flags="DPE") == 1
        await m.still_serves()


async def test_absolute_form_targets_are_normalised_too() -> None:
    async with mesh() as m:
        assert await m.h1(b"http://svc/public/%2e%2e/admin?q=/..") == 200
        assert m.received() == ([], [b"GET /admin?q=/.. HTTP/1.1"])


async def test_a_fragment_gets_400() -> None:
    async with mesh() as m:
        assert await m.h2(b"/public/x#/../../admin") == 400
        assert m.received() == ([b"GET /public/ok HTTP/1.1"], [])
        assert m.p.metric("tulle_proxy_protocol_errors_total", kind="invalid_path") == 1


@pytest.mark.parametrize("proto", ["h1", "h2"])
async def test_encoded_slashes_are_kept_opaque_by_default(proto: str) -> None:
    # `..%2Fadmin` is one segment under /public (RFC 3986 2.2: an encoded slash is data), so the
    # /public route takes it and `a` receives it as that segment, hex upper-cased.  An
    # application that decodes %2F before resolving dot segments needs `reject` or `decode`.
    async with mesh() as m:
        for raw in (b"/public/..%2fadmin", b"/public/%2E%2E%2Fadmin"):
            assert await (m.h1(raw) if proto == "h1" else m.h2(raw)) == 200
        a, b = m.received()
        assert b == []
        assert [x for x in a if x != b"GET /public/ok HTTP/1.1"] == [
            b"GET /public/..%2Fadmin HTTP/1.1"] * 2


@pytest.mark.parametrize("proto", ["h1", "h2"])
async def test_encoded_slashes_rejected_by_setting(proto: str) -> None:
    async with mesh(escaped_slashes="reject") as m:
        for raw in (b"/public/..%2fadmin", b"/public/%2E%2E%2Fadmin", b"/public/..%5cadmin"):
            assert await (m.h1(raw) if proto == "h1" else m.h2(raw)) == 400
        a, b = m.received()
        assert b == [] and all(x == b"GET /public/ok HTTP/1.1" for x in a)
        assert m.p.metric("tulle_proxy_protocol_errors_total", kind="invalid_path") == 3
        await m.still_serves()


@pytest.mark.parametrize("proto", ["h1", "h2"])
async def test_encoded_slashes_decoded_and_slashes_merged_by_setting(proto: str) -> None:
    async with mesh(escaped_slashes="decode", merge_slashes=True) as m:
        for raw in (b"/public/..%2fadmin", b"/public/%2E%2E%2Fadmin", b"//admin",
                    b"/public/..%5Cadmin", b"/public//..//admin"):
            assert await (m.h1(raw) if proto == "h1" else m.h2(raw)) == 200
        a, b = m.received()
        assert b == [b"GET /admin HTTP/1.1"] * 4
        # `//..//` removes the empty segment before it, then the slashes merge: still /public.
        assert [x for x in a if x != b"GET /public/ok HTTP/1.1"] == [
            b"GET /public/admin HTTP/1.1"]


async def test_backslash_rejected_by_setting() -> None:
    async with mesh(backslash="reject") as m:
        assert await m.h1(b"/public\\..\\admin") == 400
        assert m.received() == ([], [])
        await m.still_serves()


async def test_normalisation_off_forwards_paths_as_received() -> None:
    # Istio's NONE: what an operator gets when they turn it off (the raw path routes).
    async with mesh(normalize=False) as m:
        assert await m.h1(b"/public/%2e%2e/admin") == 200
        assert m.received() == ([b"GET /public/%2e%2e/admin HTTP/1.1"], [])


async def test_legitimate_paths_are_forwarded_unchanged() -> None:
    async with mesh() as m:
        for raw in (b"/public/x", b"/public/a%20b?q=%2e%2e/..", b"/public/.well-known/x",
                    b"/public/caf%c3%a9"):
            assert await m.h1(raw) == 200
        a, b = m.received()
        assert b == []
        assert a == [b"GET /public/x HTTP/1.1", b"GET /public/a%20b?q=%2e%2e/.. HTTP/1.1",
                     b"GET /public/.well-known/x HTTP/1.1", b"GET /public/caf%C3%A9 HTTP/1.1"]
