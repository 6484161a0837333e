"""What a hostile client can make the proxy remember (ADR 0103): attack tests with raw peers.

A client of a meshed service chooses request lines, headers and trace context.  Each test
sends such values through a real proxy (a `tulle proxy run` process where memory is measured:
its VmRSS from /proc) and checks that what the proxy keeps -- log records queued for a sink
that stopped reading, spans queued for a collector that is down, trace context passed on,
metric series, rate-limit state -- stays bounded and truthful.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.trace.v1 import trace_pb2
from tests.support.logsink import log_config, read_lines, read_records
from tests.support.otlp_receiver import running_receiver
from tests.support.proxy import free_port, running_proxy, simple_config
from tests.support.rawservers import answer_ok, connect, read_response
from tests.support.subproc import proxy_process, rss_bytes

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
MB = 1 << 20


def _not_found_config() -> dict[str, Any]:
    """A listener whose only route matches nothing a test sends: every request is a local
    404 (NR), logged and traced like any other, with no upstream to slow the flood."""
    return {
        "admin": {"port": 0},
        "listeners": [{"name": "out", "port": 0, "protocol": "http1", "route_table": "rt"}],
        "clusters": [{"name": "backend", "protocol": "http1",
                      "endpoints": [{"address": "127.0.0.1", "port": 9}]}],
        "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/never"}}],
             "backends": [{"cluster": "backend"}]}]}]}],
    }


async def _flood(port: int, request: bytes, n: int, window: int = 8) -> None:
    """`n` copies of `request` on one connection, at most `window` pipelined at a time, every
    response read (a deeper pipeline of 60 KB heads measures the HTTP/1 driver's buffers, not
    what telemetry keeps)."""
    r, w = await connect(port)
    try:
        async with asyncio.timeout(120):
            sent = seen = 0
            while seen < n:
                while sent < n and sent - seen < window:
                    w.write(request)
                    sent += 1
                await w.drain()
                line = await r.readline()
                assert line, "the proxy closed the connection"
                if line.startswith(b"HTTP/1.1 "):
                    seen += 1
    finally:
        w.close()


_BIG_HEAD = (b"GET /" + b"p" * 50_000 + b" HTTP/1.1\r\nHost: x\r\n"
             b"User-Agent: " + b"u" * 8000 + b"\r\nX-Request-Id: " + b"i" * 4000 + b"\r\n\r\n")
"""~62 KB of client-chosen path, user agent and request id: just within the default
`max_request_header_bytes` (64 KiB)."""


async def test_a_stalled_log_sink_holds_bounded_memory_whatever_the_fields(
        tmp_path: Path) -> None:
    # A FIFO nobody reads: the sink's writer blocks, records queue up to `queue_size` (10,000
    # by default).  Before ADR 0103 each record held the client's fields whole: 3,000 such
    # requests grew the proxy by ~350 MB.
    fifo = tmp_path / "stalled"
    os.mkfifo(fifo)
    cfg = _not_found_config()
    cfg["telemetry"] = {"access_log": log_config(fifo)}
    async with proxy_process(cfg, tmp_path) as p:
        await p.wait_ready()
        before = rss_bytes(p.pid)
        await _flood(p.port(), _BIG_HEAD, 3000)
        grown = rss_bytes(p.pid) - before
        assert await p.metric("tulle_proxy_log_records_total", outcome="dropped") == 0
    assert grown < 24 * MB, f"{grown / MB:.0f} MB for 3,000 queued records"


async def test_long_client_fields_are_cut_in_a_record_and_say_so(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    cfg = _not_found_config()
    cfg["telemetry"] = {"access_log": log_config(log)}
    async with running_proxy(cfg) as p:
        r, w = await connect(p.port())
        w.write(b"GET /" + b"p" * 5000 + b" HTTP/1.1\r\nHost: " + b"h" * 300 + b"\r\n"
                b"User-Agent: " + b"u" * 900 + b"\r\nX-Request-Id: " + b"i" * 400 + b"\r\n"
                b"X-Forwarded-For: " + b"9" * 700 + b"\r\n\r\n")
        await w.drain()
        assert (await r.readline()).startswith(b"HTTP/1.1 404")
        w.close()
        (rec,) = await read_records(log, 1)
    assert rec["path"] == "/" + "p" * 2047 + "...(+2953 bytes)"
    assert rec["authority"] == "h" * 256 + "...(+44 bytes)"
    assert rec["user_agent"] == "u" * 512 + "...(+388 bytes)"
    assert rec["request_id"] == "i" * 256 + "...(+144 bytes)"
    # The proxy's own entry, the peer, is at the end of x-forwarded-for: the end is kept.
    assert rec["x_forwarded_for"].startswith("(+")
    assert rec["x_forwarded_for"].endswith(", 127.0.0.1")
    assert len(rec["x_forwarded_for"]) <= 512 + len("(+999 bytes)...")


async def test_a_text_format_escapes_and_cuts_what_the_client_sent(tmp_path: Path) -> None:
    """A text line: the client's obs-text (here a C1 CSI, which terminals run as ESC [) is
    escaped and never makes a second line (held, ADR 0054/0099).  A quote and a backslash are
    escaped too (nginx's `escape=default`): unescaped, a `"` in a quoted field let a client
    move the field boundaries a log parser sees, and a client's literal `\\x9b` read the same
    as an escaped CSI.  A header value over its bound is cut with the marker; one the format
    cuts itself (`:LEN`) is cut silently, as in Envoy."""
    log = tmp_path / "access.log"
    cfg = _not_found_config()
    cfg["telemetry"] = {"access_log": log_config(
        log, format="text", text_format='"%REQ(USER-AGENT)%" %REQ(X-A)% %REQ(X-B):4%')}
    async with running_proxy(cfg) as p:
        r, w = await connect(p.port())
        w.write(b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: a\xc2\x9b2J\" 200 \"q\\x9b\r\n"
                b"X-A: " + b"a" * 300 + b"\r\nX-B: " + b"b" * 300 + b"\r\n\r\n")
        await w.drain()
        assert (await r.readline()).startswith(b"HTTP/1.1 404")
        w.close()
        (line,) = await read_lines(log, 1)
    assert line == ('"a\u00c2\\x9b2J\\x22 200 \\x22q\\x5cx9b" ' + "a" * 256
                    + "...(+44 bytes) bbbb")


@pytest.mark.parametrize("collector", ["refusing", "silent"])
async def test_spans_queued_for_a_dead_collector_hold_bounded_memory(
        tmp_path: Path, collector: str) -> None:
    # The caller's `sampled` flag is honoured (ADR 0055), so a client makes every request a
    # span; with the collector down (refusing connections) or silent (it takes the POST and
    # never answers) the exporter's queue (2,048 spans) fills with them; past it they are
    # dropped and counted.
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1] if collector == "silent" else free_port()
    cfg = _not_found_config()
    cfg["telemetry"] = {"tracing": {"otlp_endpoint": f"http://127.0.0.1:{port}",
                                    "sampling_percent": 0}}
    sampled = _BIG_HEAD.replace(b"Host: x\r\n", b"Host: x\r\ntraceparent: 00-%s-%s-01\r\n"
                                % (TRACE.encode(), SPAN.encode()))
    try:
        async with proxy_process(cfg, tmp_path) as p:
            await p.wait_ready()
            before = rss_bytes(p.pid)
            await _flood(p.port(), sampled, 4000)
            grown = rss_bytes(p.pid) - before
            counts = {r: await p.metric("tulle_proxy_trace_spans_total", result=r)
                      for r in ("exported", "dropped", "failed")}
    finally:
        server.close()
    assert counts["exported"] == 0 and counts["dropped"] > 0, counts
    assert grown < 20 * MB, f"{grown / MB:.0f} MB for 4,000 spans, {counts}"


async def _spans(send: Any, protocol: str = "http1") -> list[dict[str, Any]]:
    """The attributes (and the name, as `span.name`) of the spans the requests `send(port)`
    makes through a tracing proxy (every request sampled) left with a real OTLP receiver."""
    async with running_receiver() as rx:
        cfg = _not_found_config()
        cfg["listeners"][0]["protocol"] = protocol
        cfg["telemetry"] = {"tracing": {"otlp_endpoint": rx.url, "sampling_percent": 100}}
        async with running_proxy(cfg) as p:
            n = await send(p.port())
            async with asyncio.timeout(10):
                while sum(len(ss.spans) for e in rx.exports
                          for rs in e.message.resource_spans for ss in rs.scope_spans) < n:
                    await rx.wait_for(len(rx.exports) + 1)
    out = []
    for e in rx.exports:
        for rs in e.message.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    assert isinstance(span, trace_pb2.Span)
                    got: dict[str, Any] = {"span.name": span.name}
                    for a in span.attributes:
                        v = a.value
                        got[a.key] = getattr(v, v.WhichOneof("value"))
                    out.append(got)
    return out


async def _one_span(extra: bytes) -> dict[str, Any]:
    async def send(port: int) -> int:
        r, w = await connect(port)
        w.write(b"GET /" + b"p" * 3000 + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
        await w.drain()
        assert (await r.readline()).startswith(b"HTTP/1.1 404")
        w.close()
        return 1

    (span,) = await _spans(send)
    return span


async def test_span_attributes_from_the_client_are_cut_and_say_so() -> None:
    got = await _one_span(b"User-Agent: " + b"u" * 900 + b"\r\nX-Request-Id: " + b"i" * 400
                          + b"\r\n")
    # Envoy's `max_path_tag_length` default: 256.
    assert got["url.path"] == "/" + "p" * 255 + "...(+2745 bytes)"
    assert got["user_agent.original"] == "u" * 512 + "...(+388 bytes)"
    assert got["guid:x-request-id"] == "i" * 256 + "...(+144 bytes)"


async def test_a_client_chosen_http2_method_does_not_name_spans() -> None:
    # HTTP/1's parser knows a fixed list of methods; HTTP/2's `:method` is any token.  A span's
    # name is what tracing backends index: one per client-chosen method would grow them.
    # OTel's HTTP conventions: an unknown method is `_OTHER`, the span named `HTTP`.
    from tests.support.h2peers import H2Client

    async def send(port: int) -> int:
        c = await H2Client.connect(port)
        try:
            for i in range(20):
                resp = await c.request(f"X{i:04d}" + "M" * 300, "/")
                assert resp.status == 404
            assert (await c.request("GET", "/")).status == 404
        finally:
            c.close()
        return 21

    spans = await _spans(send, "http2")
    names = {s["span.name"] for s in spans}
    assert names == {"HTTP", "GET"}, sorted(names)[:3]
    other = [s for s in spans if s["span.name"] == "HTTP"]
    assert {s["http.request.method"] for s in other} == {"_OTHER"}
    assert all(len(s["http.request.method_original"]) <= 256 + len("...(+99 bytes)")
               for s in other)


async def _seen_upstream(extra: bytes) -> dict[str, str]:
    """The trace headers an app behind a tracing proxy received for one raw request."""
    from tests.integration.dataplane.test_tracing import echo_app

    async with echo_app() as app, running_receiver() as rx:
        cfg = simple_config(app)
        cfg["telemetry"] = {"tracing": {"otlp_endpoint": rx.url, "sampling_percent": 0}}
        async with running_proxy(cfg) as p:
            r, w = await connect(p.port())
            w.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra + b"\r\n")
            await w.drain()
            data = await r.read()
            w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:80]
    seen: dict[str, str] = json.loads(body)
    return seen


OTHER = "0af7651916cd43dd8448eb211c80319c"


async def test_a_duplicated_traceparent_restarts_the_trace() -> None:
    # W3C Trace Context test suite, test_traceparent_duplicated: two traceparent fields are
    # no context (the app and the proxy could each believe a different one).
    seen = await _seen_upstream(b"traceparent: 00-%s-%s-01\r\ntraceparent: 00-%s-%s-01\r\n"
                                % (TRACE.encode(), SPAN.encode(), OTHER.encode(),
                                   SPAN.encode()))
    trace_id = seen["traceparent"].split("-")[1]
    assert trace_id not in (TRACE, OTHER)
    # So is a B3 header given twice.
    seen = await _seen_upstream(b"b3: %s-%s-1\r\nb3: %s-%s-1\r\n"
                                % (TRACE.encode(), SPAN.encode(), OTHER.encode(),
                                   SPAN.encode()))
    assert seen["traceparent"].split("-")[1] not in (TRACE, OTHER)


async def test_a_tracestate_that_breaks_the_grammar_is_not_passed_on() -> None:
    tp = b"traceparent: 00-%s-%s-01\r\n" % (TRACE.encode(), SPAN.encode())
    for bad in (b"foo=1,foo=2",          # duplicated key
                b"FOO=1",                # upper-case key
                b"a=b=c",                # '=' in a value
                b"=x",                   # empty key
                b"a=",                   # empty value
                b"a b=c"):               # space in a key
        seen = await _seen_upstream(tp + b"tracestate: " + bad + b"\r\n")
        assert seen["traceparent"].split("-")[1] == TRACE
        assert seen["tracestate"] == "", bad
    seen = await _seen_upstream(tp + b"tracestate: congo=t61rcWkgMzE, rojo=00f067aa0ba902b7,"
                                b"t@sys=x y\r\n")
    assert seen["tracestate"] == "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7,t@sys=x y"


class _Relay:
    """A TCP relay in front of a real redis-server that can go silent: `blackhole()` makes
    every connection it carries swallow bytes both ways without closing (a connection lost
    in the network without a reset: a failed-over VIP, a stateful firewall's dropped entry),
    while connections made afterwards are relayed again."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.silent: set[asyncio.StreamWriter] = set()
        self.live: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def blackhole(self) -> None:
        self.silent |= self.live

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter,
                    me: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                if me not in self.silent:
                    w.write(data)
        except ConnectionError:
            pass
        finally:
            w.close()

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        self.live.add(w)
        await asyncio.gather(self._pipe(r, uw, w), self._pipe(ur, w, w))

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in self.live:
            w.close()


async def test_a_silently_lost_redis_connection_is_replaced(tmp_path: Path) -> None:
    # Before ADR 0103 the client kept a connection that never answered for good: every
    # request waited its timeout and failed (429 here, fail-closed) until the kernel gave up
    # on the connection (~15 min of retransmissions), although Redis answered a new one.
    import time

    from bench.global_limit import proxy_config
    from tests.support.redis import redis_server

    async def status(port: int) -> int:
        r, w = await connect(port)
        try:
            w.write(b"GET /closed HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            line = await asyncio.wait_for(r.readline(), 5)
            return int(line.split()[1])
        finally:
            w.close()

    origin = await asyncio.start_server(answer_ok, "127.0.0.1", 0)
    async with redis_server() as redis:
        relay = _Relay(redis.port)
        try:
            rport = await relay.start()
            cfg = proxy_config(origin.sockets[0].getsockname()[1], f"127.0.0.1:{rport}",
                               1_000_000, 60_000, 20)
            async with running_proxy(cfg) as p:
                port = p.server.bound_port("in")
                assert await status(port) == 200
                relay.blackhole()
                assert await status(port) == 429  # no answer within 20 ms: fail-closed
                start = time.monotonic()
                codes: list[int] = []
                while time.monotonic() - start < 5.0:
                    codes.append(await status(port))
                    if codes[-1] == 200:
                        break
                    await asyncio.sleep(0.02)
                assert codes[-1] == 200, f"{len(codes)} requests, still {codes[-1]}"
                # Bounded waits all along: each request waited at most about its timeout.
                assert time.monotonic() - start < 4.0
        finally:
            relay.close()
            origin.close()



async def _status_origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An upstream that answers the status its request path names (`/s/NNN/...`): a client
    behind an application that reflects a value into its status picks the status."""
    try:
        while head := await reader.readuntil(b"\r\n\r\n"):
            path = head.split(b" ", 2)[1]
            status = path.split(b"/")[2] if path.startswith(b"/s/") else b"200"
            writer.write(b"HTTP/1.1 %s X\r\ncontent-length: 0\r\n\r\n" % status)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


_METHODS = (b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"HEAD", b"PROPFIND",
            b"MKCOL", b"PURGE", b"SEARCH", b"REPORT", b"LOCK", b"MKACTIVITY", b"QUERY")


async def test_a_hundred_thousand_client_values_mint_no_metric_series(tmp_path: Path) -> None:
    """Held: no label of /metrics takes a client-chosen value.  100,000 requests, each with
    its own path, query, authority, user agent, request id and trace id, across every method
    HTTP/1's parser knows, with the upstream answering one of 800 statuses the client chose
    (the status is a label: bounded by its three digits); then 2,000 gRPC calls over HTTP/2
    with their own service, method and authority.  The exposition (parsed by
    prometheus_client's parser) keeps the same families and a bounded number of series, and
    the proxy's memory stays flat."""
    from prometheus_client.parser import text_string_to_metric_families
    from tests.support.h2peers import H2Client, running_h2_origin

    from tulle.dataplane.telemetry.golden import OVERFLOW

    n = 100_000
    upstream = await asyncio.start_server(_status_origin, "127.0.0.1", 0)
    async with running_h2_origin() as (h2port, _):
        cfg = simple_config(upstream.sockets[0].getsockname()[1])
        cfg["listeners"].append({"name": "grpc", "port": 0, "protocol": "http2",
                                 "cluster": "h2"})
        cfg["clusters"].append({"name": "h2", "protocol": "http2", "endpoints": [
            {"address": "127.0.0.1", "port": h2port}]})
        cfg["telemetry"] = {"metrics": {}}
        try:
            async with proxy_process(cfg, tmp_path) as p:
                await p.wait_ready()
                r, w = await connect(p.port())
                sent = seen = 0
                async with asyncio.timeout(600):
                    before = 0
                    while seen < n:
                        while sent < n and sent - seen < 16:
                            i = sent
                            method = _METHODS[i % len(_METHODS)]
                            w.write(b"%s /s/%d/%d?q=%d HTTP/1.1\r\nHost: h%d.example\r\n"
                                    b"User-Agent: ua-%d\r\nX-Request-Id: %d\r\n"
                                    b"traceparent: 00-%032x-%016x-01\r\n"
                                    b"Content-Length: 0\r\n\r\n"
                                    % (method, 200 + i % 800, i, i, i, i, i, i + 1, i + 1))
                            sent += 1
                        await w.drain()
                        line = await r.readline()
                        assert line, "closed"
                        if line.startswith(b"HTTP/1.1 "):
                            seen += 1
                            if seen == 2000:  # every status seen once: the series exist
                                _, early = await p.admin("/metrics")
                                before = rss_bytes(p.pid)  # (after the render's own)
                w.close()
                c = await H2Client.connect(p.port("grpc"))
                try:
                    for i in range(2000):
                        sid, resp = c.start("POST", f"/pkg{i}.Svc{i}/Method{i}", [
                            (b"content-type", b"application/grpc"), (b"te", b"trailers")],
                            end_stream=False, authority=f"grpc{i}.example")
                        await c.send_body(sid, b"\x00" * 5)
                        await resp.done.wait()
                        assert resp.status > 0
                finally:
                    c.close()
                grown = rss_bytes(p.pid) - before
                status, body = await p.admin("/metrics")
                assert status == 200
        finally:
            upstream.close()
    text = body.decode()
    label_sets: dict[str, set[tuple[tuple[str, str], ...]]] = {}
    for fam in text_string_to_metric_families(text):
        for sample in fam.samples:
            for name, value in sample.labels.items():
                assert "example" not in value and "ua-" not in value, (fam.name, name, value)
                assert "Svc" not in value and "Method" not in value, (fam.name, name, value)
                if name == "response_code":
                    assert value == OVERFLOW or (value.isdigit() and len(value) == 3), value
            label_sets.setdefault(fam.name, set()).add(
                tuple(sorted((k, v) for k, v in sample.labels.items() if k != "le")))
    # Each family within its bound (`max_series_per_family`, 2,000, and its overflow series):
    # here the 800 statuses, which an application reflecting the client's choice lets it
    # pick, are 800 series per golden family -- 28 MB of exposition, the cost ADR 0103 leaves
    # to that bound.
    assert all(len(sets) <= 2001 for sets in label_sets.values()), {
        k: len(v) for k, v in label_sets.items() if len(v) > 2001}
    assert len(label_sets["istio_requests"]) >= 800  # (the parser names counters without _total)
    # The 98,000 requests after the first 2,000 (and the gRPC calls: their series, one per
    # family and listener, excepted) made no series: the exposition grew by digits only.
    early_series = {line.rpartition(" ")[0] for line in early.decode().splitlines()}
    late_series = {line.rpartition(" ")[0] for line in text.splitlines()}
    new = [s for s in late_series - early_series if 'listener="grpc"' not in s
           and 'request_protocol="grpc"' not in s and "h2" not in s]
    assert new == [], new[:3]
    assert grown < 20 * MB, f"{grown / MB:.1f} MB"


async def test_client_chosen_limit_keys_and_session_values_hold_bounded_memory(
        tmp_path: Path) -> None:
    """Held: a local limit keyed by a header keeps at most `max_buckets` buckets (LRU), values
    over 128 bytes by their SipHash; a session filter's caches keep at most 4,096 values of at
    most 64 bytes.  100,000 distinct values (a tenth of them 8 KB long) through both on one
    route: the proxy's memory stays within a few MB, the limit still limits, and the
    oldest key, pushed out of the LRU, starts again with a full bucket (the documented cost)."""
    upstream = await asyncio.start_server(_status_origin, "127.0.0.1", 0)
    cfg = simple_config(upstream.sockets[0].getsockname()[1])
    cfg["route_tables"][0]["virtual_hosts"][0]["rules"][0]["filters"] = [
        {"type": "RateLimit", "name": "per-tenant", "local": {
            "requests": 2, "interval_ms": 600_000, "by": "header", "header": "x-tenant",
            "max_buckets": 10_000}},
        {"type": "SessionPersistence", "name": "x-session", "kind": "Header"}]
    n = 100_000

    def request(i: int, tenant: bytes) -> bytes:
        return (b"GET /%d HTTP/1.1\r\nHost: x\r\nX-Tenant: %s\r\nX-Session: s%d%s\r\n\r\n"
                % (i, tenant, i, b"z" * (8000 if i % 10 == 0 else 0)))

    async def statuses(r: asyncio.StreamReader, w: asyncio.StreamWriter,
                       reqs: list[bytes]) -> list[int]:
        out = []
        for req in reqs:
            w.write(req)
            resp = await read_response(r)
            out.append(resp.status)
        return out

    try:
        async with proxy_process(cfg, tmp_path) as p:
            await p.wait_ready()
            r, w = await connect(p.port())
            async with asyncio.timeout(600):
                assert await statuses(r, w, [request(0, b"first")] * 3) == [200, 200, 429]
                before = rss_bytes(p.pid)
                sent = seen = 0
                while seen < n:
                    while sent < n and sent - seen < 16:
                        tenant = b"t%d" % sent + (b"y" * 8000 if sent % 10 == 0 else b"")
                        w.write(request(sent, tenant))
                        sent += 1
                    await w.drain()
                    resp = await read_response(r)
                    assert resp.status == 200, resp.status
                    seen += 1
                grown = rss_bytes(p.pid) - before
                # A recent key is still limited; the first one was pushed out and starts full.
                last = b"t%d" % (n - 1)
                assert await statuses(r, w, [request(1, last)] * 2) == [200, 429]
                assert await statuses(r, w, [request(2, b"first")]) == [200]
            w.close()
    finally:
        upstream.close()
    assert grown < 12 * MB, f"{grown / MB:.1f} MB"


async def test_a_frozen_redis_costs_each_request_its_timeout_and_no_more(tmp_path: Path) -> None:
    """Held: Redis stopped (SIGSTOP: it accepts and never answers) -- each request waits at
    most its `timeout_ms` and gets its route's failure mode (open: 200, closed: 429); Redis
    going on again (SIGCONT), the limit works again."""
    import signal
    import time

    from bench.global_limit import proxy_config
    from tests.support.redis import redis_server

    async def timed(port: int, path: bytes) -> tuple[int, float]:
        start = time.monotonic()
        r, w = await connect(port)
        try:
            w.write(b"GET %s HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n" % path)
            line = await asyncio.wait_for(r.readline(), 5)
            return int(line.split()[1]), time.monotonic() - start
        finally:
            w.close()

    origin = await asyncio.start_server(answer_ok, "127.0.0.1", 0)
    async with redis_server() as redis:
        assert redis.proc is not None
        try:
            cfg = proxy_config(origin.sockets[0].getsockname()[1], redis.address,
                               1_000_000, 60_000, 50)
            async with running_proxy(cfg) as p:
                port = p.server.bound_port("in")
                assert [(await timed(port, b"/open"))[0],
                        (await timed(port, b"/closed"))[0]] == [200, 200]
                redis.proc.send_signal(signal.SIGSTOP)
                try:
                    got = [await timed(port, path) for _ in range(10)
                           for path in (b"/open", b"/closed")]
                finally:
                    redis.proc.send_signal(signal.SIGCONT)
                assert [code for code, _ in got] == [200, 429] * 10
                assert max(t for _, t in got) < 0.5, got  # 50 ms and a loopback round trip
                async with asyncio.timeout(5):
                    while (await timed(port, b"/closed"))[0] != 200:
                        await asyncio.sleep(0.05)
        finally:
            origin.close()


async def test_a_404_names_a_bounded_part_of_the_host_and_path(tmp_path: Path) -> None:
    """Pipelined requests the proxy answers itself (here 404, no route) while the client reads
    nothing: each answer echoed the client's host and path whole (~50 KB here) and waited in
    the proxy's transport: 3,000 requests grew it by ~275 MB.  The 404 now names at most 256
    bytes of each (ADR 0103); every answer still arrives."""
    n = 3000
    async with proxy_process(_not_found_config(), tmp_path) as p:
        await p.wait_ready()
        before = peak = rss_bytes(p.pid)
        r, w = await connect(p.port())
        for _ in range(n):
            w.write(_BIG_HEAD)  # (queued in this process's transport when the proxy waits)
        for _ in range(40):
            await asyncio.sleep(0.05)
            peak = max(peak, rss_bytes(p.pid))
        grown = peak - before
        assert grown < 40 * MB, f"{grown / MB:.0f} MB with {n} answers unread"
        async with asyncio.timeout(120):
            first = await read_response(r)
            assert first.status == 404
            assert first.body == (b"no route for host 'x' path '/" + b"p" * 255
                                  + b"...(+49745 bytes)' on listener out\n")
            for _ in range(n - 1):
                assert (await read_response(r)).status == 404
        w.close()


async def test_a_client_that_does_not_read_its_answers_is_not_read_either() -> None:
    """Locally answered requests (404s), pipelined by a client that reads nothing: the proxy
    kept reading and queueing answers in its transport without bound (no upstream to pause).
    It now stops reading a client whose answers wait above the transport's high-water mark,
    as it stops reading an upstream for it."""
    import socket

    n = 60_000
    async with running_proxy(_not_found_config()) as p:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", p.port()))
        sock.setblocking(False)
        r, w = await asyncio.open_connection(sock=sock)
        w.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * n)
        await asyncio.sleep(1.0)
        answered = p.metric("tulle_proxy_requests_total")
        (conn,) = p.server.listeners["out"].connections
        held = conn.transport.get_write_buffer_size()  # type: ignore[attr-defined]
        assert answered < n, "every request was read and answered into an unread socket"
        assert held < 1 * MB, held
        async with asyncio.timeout(120):
            for _ in range(n):
                assert (await read_response(r)).status == 404
        w.close()


async def test_a_client_cannot_choose_its_source_ip_hash_key() -> None:
    """Maglev on `source_ip`: every request of one peer goes to one endpoint.  A client that
    sent two x-forwarded-for fields had the first field's last entry, its own text, taken as
    its address (the proxy appends the peer to the last field), so it spread its requests, or
    aimed them, as it liked (ADR 0103)."""
    from tests.support.rawservers import named_origin, raw_server

    async with raw_server(named_origin(b"A")) as a, raw_server(named_origin(b"B")) as b:
        cfg = simple_config(a.port)
        cfg["clusters"][0].update(
            lb_policy="maglev", lb={"hash_policies": [{"type": "source_ip"}]},
            endpoints=[{"address": "127.0.0.1", "port": s.port} for s in (a, b)])
        async with running_proxy(cfg) as p:
            r, w = await connect(p.port())
            reached = set()
            for i in range(24):
                w.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 10.0.0.%d\r\n"
                        b"X-Forwarded-For: 10.9.9.9\r\n\r\n" % i)
                reached.add((await read_response(r)).body)
            w.close()
    assert len(reached) == 1, reached


async def test_a_log_on_a_full_disk_costs_bounded_memory_and_no_request(tmp_path: Path) -> None:
    """Held: a file sink whose every write fails with ENOSPC (/dev/full): records are counted
    failed, at most one torn line is kept to finish later, requests go on, memory stays flat."""
    cfg = _not_found_config()
    cfg["telemetry"] = {"access_log": {"sink": {"kind": "file", "path": "/dev/full",
                                                "flush_interval_ms": 10}}}
    async with proxy_process(cfg, tmp_path) as p:
        await p.wait_ready()
        before = rss_bytes(p.pid)
        await _flood(p.port(), _BIG_HEAD, 2000)
        grown = rss_bytes(p.pid) - before
        async with asyncio.timeout(10):
            while await p.metric("tulle_proxy_log_records_total", outcome="failed") < 1900:
                await asyncio.sleep(0.05)
        assert await p.metric("tulle_proxy_log_records_total", outcome="written") == 0
    assert grown < 24 * MB, f"{grown / MB:.0f} MB"
