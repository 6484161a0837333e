"""HTTP filters through a real proxy: header modifiers over HTTP/1.1 and h2c, and the chain's
driver seams (stop/resume with a body in flight, local replies per protocol, a failing filter).

The origin is raw: it records every byte of each request (head and body) and answers with
fixed response headers, so each test asserts exactly what the origin received and what the
client got, the counters, and that the listener still serves afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.support.h2peers import H2Client
from tests.support.proxy import RunningProxy, running_proxy
from tests.support.rawservers import RawServer, connect, raw_server, read_response

from tulle.dataplane.filters import headers as headers_filter
from tulle.dataplane.http.filter import BUFFER, CONTINUE, STOP, FilterStream, HttpFilter
from tulle.dataplane.routing import router as router_mod


async def recording_origin(srv: RawServer, r: asyncio.StreamReader,
                           w: asyncio.StreamWriter) -> None:
    """Keep-alive origin: records each request (head + content-length body), answers 200."""
    while True:
        head = await r.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            n, _, v = line.partition(b":")
            if n.strip().lower() == b"content-length":
                length = int(v)
        body = await r.readexactly(length) if length else b""
        srv.requests.append(head + body)
        w.write(b"HTTP/1.1 200 OK\r\nserver: origin\r\nx-debug: secret\r\n"
                b"cache-control: max-age=60\r\ncontent-length: 2\r\n\r\nok")
        await w.drain()


FILTERS = [
    {"type": "RequestHeaderModifier",
     "set": [{"name": "X-Env", "value": "prod"}],
     "add": [{"name": "X-Tag", "value": "added"}],
     "remove": ["X-Secret"]},
    {"type": "ResponseHeaderModifier",
     "set": [{"name": "Cache-Control", "value": "no-store"}],
     "add": [{"name": "X-Served-By", "value": "tulle"}],
     "remove": ["x-debug"]},
]


def config(port: int) -> dict[str, Any]:
    return {
        "listeners": [{"name": "out", "port": 0, "protocol": "auto", "route_table": "rt"}],
        "clusters": [{"name": "c", "endpoints": [{"address": "127.0.0.1", "port": port}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/f"}}],
             "backends": [{"cluster": "c"}], "filters": FILTERS},
            {"backends": [{"cluster": "c"}]},
        ]}]}],
    }


@contextlib.asynccontextmanager
async def proxied() -> AsyncIterator[tuple[RunningProxy, RawServer]]:
    async with raw_server(recording_origin) as o, running_proxy(config(o.port)) as p:
        yield p, o


REQ_HEADERS = [(b"x-env", b"dev"), (b"x-env", b"staging"), (b"x-tag", b"orig"),
               (b"x-secret", b"hunter2")]


async def h1(p: RunningProxy, path: bytes, body: bytes = b"") -> tuple[int, list[Any], bytes]:
    r, w = await connect(p.port())
    fields = b"".join(b"%b: %b\r\n" % kv for kv in REQ_HEADERS)
    method = b"POST" if body else b"GET"
    w.write(b"%b %b HTTP/1.1\r\nHost: svc\r\n%bcontent-length: %d\r\n\r\n%b"
            % (method, path, fields, len(body), body))
    resp = await asyncio.wait_for(read_response(r), 10)
    w.close()
    return resp.status, resp.headers, resp.body


async def h2(p: RunningProxy, path: str, body: bytes = b"",
             extra: list[tuple[bytes, bytes]] | None = None) -> Any:
    c = await H2Client.connect(p.port())
    length = [(b"content-length", b"%d" % len(body))] if body else []
    try:
        return await asyncio.wait_for(c.request("POST" if body else "GET", path,
                                                REQ_HEADERS + length + (extra or []), body), 10)
    finally:
        c.close()


def origin_fields(raw: bytes) -> list[tuple[bytes, bytes]]:
    head = raw.split(b"\r\n\r\n", 1)[0]
    return [(n.strip().lower(), v.strip()) for n, _, v in
            (line.partition(b":") for line in head.split(b"\r\n")[1:])]


def edited(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [kv for kv in fields if kv[0] in (b"x-env", b"x-tag", b"x-secret")]


@pytest.mark.parametrize("proto", ["h1", "h2"])
async def test_request_and_response_headers_modified_as_configured(proto: str) -> None:
    async with proxied() as (p, o):
        if proto == "h1":
            status, resp_headers, body = await h1(p, b"/f/x")
        else:
            r = await h2(p, "/f/x")
            status, resp_headers, body = r.status, r.headers, bytes(r.body)
        assert (status, body) == (200, b"ok")
        assert len(o.requests) == 1
        # set replaced both x-env values; add kept the original x-tag; remove dropped x-secret.
        assert edited(origin_fields(o.requests[0])) == [
            (b"x-tag", b"orig"), (b"x-env", b"prod"), (b"x-tag", b"added")]
        got = {n: v for n, v in resp_headers}
        assert got[b"cache-control"] == b"no-store" and got[b"x-served-by"] == b"tulle"
        assert b"x-debug" not in got and got[b"server"] == b"origin"
        assert p.metric("tulle_proxy_requests_total", response_code="200") == 1


@pytest.mark.parametrize("proto", ["h1", "h2"])
async def test_a_route_without_filters_is_unchanged(proto: str) -> None:
    async with proxied() as (p, o):
        if proto == "h1":
            status, resp_headers, _ = await h1(p, b"/other")
        else:
            r = await h2(p, "/other")
            status, resp_headers = r.status, r.headers
        assert status == 200
        assert edited(origin_fields(o.requests[0])) == REQ_HEADERS
        got = {n: v for n, v in resp_headers}
        assert got[b"x-debug"] == b"secret" and got[b"cache-control"] == b"max-age=60"
        assert b"x-served-by" not in got


class _Delay(HttpFilter):
    """Stops on the request head and resumes on a later loop turn (an external call's shape)."""

    __slots__ = ()

    def on_request_head(self, stream: FilterStream) -> int:
        asyncio.get_running_loop().call_later(0.05, stream.resume)
        return STOP


class _Deny(HttpFilter):
    __slots__ = ()

    def on_request_head(self, stream: FilterStream) -> int:
        stream.reply(403, b"denied by filter\n")
        return STOP


class _Factory:
    name = "fault"
    stateless = True

    def __init__(self, f: HttpFilter) -> None:
        self.f = f
        self.filter_type = type(f)

    def create(self) -> HttpFilter:
        return self.f


@contextlib.asynccontextmanager
async def with_extra(f: HttpFilter) -> AsyncIterator[tuple[RunningProxy, RawServer]]:
    """The configured route also gets `f` (at the `fault` position, before headers)."""
    real = router_mod.factory_for
    mp = pytest.MonkeyPatch()

    def factories(cfg: Any, *matches: Any) -> Any:
        if cfg.__class__.__name__ == "RequestHeaderModifier":
            return _Factory(f)
        return real(cfg, *matches)
    mp.setattr(router_mod, "factory_for", factories)
    try:
        async with proxied() as po:
            yield po
    finally:
        mp.undo()


@pytest.mark.parametrize("proto", ["h1", "h2"])
async def test_a_stopped_head_holds_the_body_and_resumes_with_all_of_it(proto: str) -> None:
    body = b"0123456789" * 3000  # several DATA frames / reads arrive while the filter waits
    async with with_extra(_Delay()) as (p, o):
        if proto == "h1":
            status, _, got = await h1(p, b"/f/up", body)
        else:
            r = await h2(p, "/f/up", body)
            status, got = r.status, bytes(r.body)
        assert (status, got) == (200, b"ok")
        assert len(o.requests) == 1 and o.requests[0].endswith(b"\r\n\r\n" + body)
        assert p.metric("tulle_proxy_requests_total", response_code="200") == 1


@pytest.mark.parametrize("proto", ["h1", "h2", "grpc"])
async def test_a_local_reply_renders_per_protocol_and_reaches_no_origin(proto: str) -> None:
    async with with_extra(_Deny()) as (p, o):
        if proto == "h1":
            status, _, body = await h1(p, b"/f/x")
            assert (status, body) == (403, b"denied by filter\n")
        elif proto == "h2":
            r = await h2(p, "/f/x")
            assert (r.status, bytes(r.body)) == (403, b"denied by filter\n")
        else:
            r = await h2(p, "/f/pkg.Svc/Call", b"\x00\x00\x00\x00\x00",
                         [(b"content-type", b"application/grpc"), (b"te", b"trailers")])
            # trailers-only: HTTP 200, grpc-status in the one header block, no body
            assert r.status == 200 and bytes(r.body) == b""
            assert r.header(b"grpc-status") == b"7"  # 403 -> PERMISSION_DENIED
        assert o.requests == []
        assert p.metric("tulle_proxy_requests_total", response_code="403") == 1
        assert (await h1(p, b"/other"))[0] == 200  # still serves


@pytest.mark.parametrize("proto", ["h1", "h2"])
async def test_a_failing_filter_is_a_500_counted_and_the_listener_serves_on(proto: str) -> None:
    def boom(self: Any, stream: Any) -> int:
        raise RuntimeError("filter bug")

    class FailingEdit:
        """Stands in for the (compiled) `HeaderEdit`, which cannot be patched in place."""

        def __init__(self, cfg: Any) -> None:
            pass

        def apply(self, headers: Any) -> None:
            boom(self, headers)

    mp = pytest.MonkeyPatch()
    # A chain of header modifiers only applies their edits straight to the head (no hook
    # call): the edit itself fails, which is what either path runs.
    mp.setattr(headers_filter, "HeaderEdit", FailingEdit)
    try:
        async with proxied() as (p, o):
            status = (await h1(p, b"/f/x"))[0] if proto == "h1" else (await h2(p, "/f/x")).status
            assert status == 500
            assert o.requests == []
            assert p.metric("tulle_proxy_filter_errors_total", listener="out",
                            filter="headers") == 1
            assert p.metric("tulle_proxy_requests_total", response_code="500") == 1
            assert (await h1(p, b"/other"))[0] == 200
    finally:
        mp.undo()


@pytest.mark.parametrize("bad", [
    {"type": "RequestHeaderModifier", "add": [{"name": "x-a", "value": "1\r\nx-injected: 1"}]},
    {"type": "ResponseHeaderModifier", "set": [{"name": "x-a", "value": "1\r\n\r\nHTTP/1.1"}]},
    {"type": "RequestHeaderModifier", "remove": ["host"]},
    {"type": "RequestHeaderModifier", "set": [{"name": "Content-Length", "value": "0"}]},
])
async def test_hostile_filter_config_is_refused_and_the_last_good_one_keeps_serving(
        bad: dict[str, Any]) -> None:
    async with proxied() as (p, o):
        cfg = config(o.port)
        cfg["route_tables"][0]["virtual_hosts"][0]["rules"][0]["filters"] = [bad]
        with pytest.raises(ValueError, match=r"rules\[0\]\.filters\[0\]\."):
            await p.apply(cfg)
        status, resp_headers, _ = await h1(p, b"/f/x")
        assert status == 200
        assert edited(origin_fields(o.requests[0])) == [
            (b"x-tag", b"orig"), (b"x-env", b"prod"), (b"x-tag", b"added")]
        assert len(o.requests) == 1 and b"injected" not in o.requests[0]


class _Hold(HttpFilter):
    """Stops on the request head and never resumes by itself; the test resumes it."""

    __slots__ = ("flag", "streams")

    def __init__(self, flag: str = "") -> None:
        self.streams: list[FilterStream] = []
        self.flag = flag

    def on_request_head(self, stream: FilterStream) -> int:
        self.streams.append(stream)
        if self.flag:
            stream.record.flags = self.flag  # as the fault filter marks a delay it holds
        return STOP


@pytest.mark.parametrize(("proto", "flag", "logged"), [
    ("h1", "", "DC"), ("h2", "", "DC"),
    ("h1", "DI", "DI,DC"),  # gone during an injected delay: both flags, as Envoy logs them
])
async def test_client_gone_while_stopped_reaches_no_origin_and_a_late_resume_is_harmless(
        proto: str, flag: str, logged: str) -> None:
    hold = _Hold(flag)
    async with with_extra(hold) as (p, o):
        if proto == "h1":
            r, w = await connect(p.port())
            w.write(b"POST /f/x HTTP/1.1\r\nHost: svc\r\ncontent-length: 10\r\n\r\n01234")
            await w.drain()
            await eventually_true(lambda: bool(hold.streams))
            w.close()  # mid-body, while the filter holds the head
        else:
            c = await H2Client.connect(p.port())
            sid, _ = c.start("POST", "/f/x", [(b"content-length", b"10")], end_stream=False)
            await eventually_true(lambda: bool(hold.streams))
            c.reset(sid)
        await eventually_true(lambda: p.metric("tulle_proxy_requests_total",
                                               response_flags=logged) == 1)
        hold.streams[0].resume()  # the filter's external call comes back late
        hold.streams[0].reply(403, b"late\n")
        if proto == "h2":
            c.close()
        assert o.requests == [] and o.connections == 0
        assert (await h1(p, b"/other"))[0] == 200  # the listener serves on


async def eventually_true(cond: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


class _RejectResponse(HttpFilter):
    """Replaces the upstream's response with its own (a response-side policy)."""

    __slots__ = ()

    def on_response_head(self, stream: FilterStream, head: Any) -> int:
        stream.reply(502, b"response refused by filter\n")
        return STOP


@pytest.mark.parametrize("proto", ["h1", "h2"])
async def test_a_reply_on_the_response_head_replaces_the_upstream_response(proto: str) -> None:
    async with with_extra(_RejectResponse()) as (p, o):
        for _ in range(2):  # the upstream connection is dropped, not reused mid-response
            if proto == "h1":
                status, headers, body = await h1(p, b"/f/x")
            else:
                r = await h2(p, "/f/x")
                status, headers, body = r.status, r.headers, bytes(r.body)
            assert (status, body) == (502, b"response refused by filter\n")
            assert b"x-debug" not in dict(headers)
        assert len(o.requests) == 2
        assert p.metric("tulle_proxy_requests_total", response_code="502") == 2
        assert (await h1(p, b"/other"))[0] == 200


class _Inspect(HttpFilter):
    """A request-data filter: buffers the whole body, refuses one that says `forbidden`."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def on_request_data(self, stream: FilterStream, data: bytes, end: bool) -> int:
        if not end:
            return BUFFER
        if b"forbidden" in data:
            stream.reply(403, b"body refused\n")
            return STOP
        self.seen.append(data)
        return CONTINUE


@pytest.mark.parametrize("proto", ["h1", "h2"])
async def test_a_request_data_filter_sees_the_whole_body_and_may_refuse_it(proto: str) -> None:
    f = _Inspect()
    good = b"0123456789" * 3000  # several reads / DATA frames, buffered by the filter
    bad = good + b"forbidden"
    async with with_extra(f) as (p, o):
        for body, want in ((good, 200), (bad, 403)):
            if proto == "h1":
                status, _, got = await h1(p, b"/f/up", body)
            else:
                r = await h2(p, "/f/up", body)
                status, got = r.status, bytes(r.body)
            assert status == want
            assert got == (b"ok" if want == 200 else b"body refused\n")
        assert f.seen == [good]
        # The allowed body reached the origin whole; the refused one never did.
        await eventually_true(lambda: len(o.requests) >= 1)
        assert len(o.requests) == 1 and o.requests[0].endswith(b"\r\n\r\n" + good)
        assert p.metric("tulle_proxy_requests_total", response_code="403") == 1
        assert (await h1(p, b"/other"))[0] == 200


class _SlowResponse(HttpFilter):
    """Stops the response head, edits it and resumes on a later loop turn; sees the body."""

    __slots__ = ("body",)

    def __init__(self) -> None:
        self.body = bytearray()

    def on_response_head(self, stream: FilterStream, head: Any) -> int:
        head.headers.append((b"x-checked", b"later"))
        asyncio.get_running_loop().call_later(0.05, stream.resume)
        return STOP

    def on_response_data(self, stream: FilterStream, data: bytes, end: bool) -> int:
        self.body += data
        return CONTINUE


@pytest.mark.parametrize("proto", ["h1", "h2"])
async def test_a_stopped_response_head_resumes_with_its_body(proto: str) -> None:
    f = _SlowResponse()
    async with with_extra(f) as (p, o):
        for _ in range(2):  # and the connections stay usable
            if proto == "h1":
                status, headers, got = await h1(p, b"/f/x")
            else:
                r = await h2(p, "/f/x")
                status, headers, got = r.status, r.headers, bytes(r.body)
            assert (status, got) == (200, b"ok")
            assert dict(headers)[b"x-checked"] == b"later"
        assert bytes(f.body) == b"okok" and len(o.requests) == 2
        assert p.metric("tulle_proxy_requests_total", response_code="200") == 2


class _Observer(HttpFilter):
    """Keeps what `on_done` reads of each request's record (an access log's shape)."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen: list[tuple[int, str, str, str, int, int]] = []

    def on_done(self, stream: FilterStream) -> None:
        r = stream.record
        self.seen.append((r.status, r.flags, r.cluster, r.upstream_host, r.bytes_in, r.bytes_out))


@pytest.mark.parametrize("proto", ["h1", "h2"])
async def test_an_observer_reads_the_request_record_once_with_the_endpoint_that_took_it(
        proto: str) -> None:
    obs = _Observer()
    async with with_extra(obs) as (p, o):
        if proto == "h1":
            status, _, got = await h1(p, b"/f/up", b"abc")
        else:
            r = await h2(p, "/f/up", b"abc")
            status, got = r.status, bytes(r.body)
        assert (status, got) == (200, b"ok")
        assert obs.seen == [(200, "", "c", f"127.0.0.1:{o.port}", 3, 2)]
