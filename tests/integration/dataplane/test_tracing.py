"""Traces across two real proxies over mesh mTLS, exported to a real OTLP/HTTP receiver.

app client → client proxy (outbound, CLIENT span) ══mTLS══> server proxy (inbound, SERVER
span) → app.  The receiver (tests/support/otlp_receiver.py, aiohttp) decodes every export with
the real opentelemetry-proto classes.  The app echoes the trace headers it received, so each
test checks the chain end to end: the caller's span → the client proxy's span → the server
proxy's span → what the app sees as its parent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.trace.v1 import trace_pb2
from tests.integration.dataplane.test_mtls import CLIENT_ID, client_config, server_config
from tests.support.ca import TestCA
from tests.support.controlplane import serve_handler
from tests.support.otlp_receiver import OtlpReceiver, running_receiver
from tests.support.proxy import RunningProxy, running_proxy

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
APP_SPAN = "00f067aa0ba902b7"
_HEADERS = ("traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
            "x-b3-parentspanid", "x-b3-sampled", "x-request-id")


@asynccontextmanager
async def echo_app() -> AsyncIterator[int]:
    """An app that answers with the trace headers it received."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({h: request.headers.get(h, "") for h in _HEADERS})

    async with serve_handler(handler) as port:
        yield port


@asynccontextmanager
async def traced_mesh(receiver: OtlpReceiver, *, protocol: str = "http1",
                      client_tracing: dict[str, Any] | None = None,
                      server_tracing: dict[str, Any] | None = None,
                      ) -> AsyncIterator[tuple[RunningProxy, RunningProxy]]:
    ca = TestCA()
    async with AsyncExitStack() as stack:
        app = await stack.enter_async_context(echo_app())
        scfg = server_config(ca, app, app)
        scfg["node"] = {"name": "server-0", "namespace": "shop", "service": "server"}
        scfg["telemetry"] = {"tracing": {"otlp_endpoint": receiver.url,
                                         **(server_tracing or {"sampling_percent": 0})}}
        server = await stack.enter_async_context(running_proxy(scfg))
        ccfg = client_config(ca, server.port("in"), protocol=protocol)
        ccfg["node"] = {"name": "client-0", "namespace": "shop", "service": "client"}
        ccfg["telemetry"] = {"tracing": {"otlp_endpoint": receiver.url,
                                         **(client_tracing or {"sampling_percent": 100})}}
        client = await stack.enter_async_context(running_proxy(ccfg))
        yield client, server


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers or {}) as r:
        return r.status, await r.json()


def spans_of(receiver: OtlpReceiver) -> dict[str, list[tuple[str, trace_pb2.Span]]]:
    """Spans by trace id (hex), each with the `service.name` of the proxy that sent it."""
    out: dict[str, list[tuple[str, trace_pb2.Span]]] = {}
    for export in receiver.exports:
        assert export.path == "/v1/traces"
        for rs in export.message.resource_spans:
            service = {a.key: a.value.string_value
                       for a in rs.resource.attributes}["service.name"]
            for ss in rs.scope_spans:
                for span in ss.spans:
                    out.setdefault(span.trace_id.hex(), []).append((service, span))
    return out


async def wait_spans(receiver: OtlpReceiver, trace_id: str, n: int) -> list[
        tuple[str, trace_pb2.Span]]:
    while len(spans_of(receiver).get(trace_id, [])) < n:
        await receiver.wait_for(len(receiver.exports) + 1)
    return spans_of(receiver)[trace_id]


def attrs(span: trace_pb2.Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = getattr(v, v.WhichOneof("value"))
    return out


@pytest.mark.parametrize("protocol", ["http1", "http2"])
async def test_client_span_then_server_span_then_the_app_across_two_proxies(
        protocol: str) -> None:
    async with running_receiver() as receiver, traced_mesh(receiver, protocol=protocol) as (
            client, _):
        status, seen = await get(client.url("out", "/items?id=7"), {
            "traceparent": f"00-{TRACE}-{APP_SPAN}-01", "tracestate": "app=1"})
        assert status == 200
        spans = dict(await wait_spans(receiver, TRACE, 2))
        c, s = spans["client"], spans["server"]
        # The chain: the app's span → CLIENT (client proxy) → SERVER (server proxy) → app.
        assert c.kind == trace_pb2.Span.SPAN_KIND_CLIENT
        assert s.kind == trace_pb2.Span.SPAN_KIND_SERVER
        assert c.parent_span_id.hex() == APP_SPAN
        assert s.parent_span_id == c.span_id
        assert seen["traceparent"] == f"00-{TRACE}-{s.span_id.hex()}-01"
        assert seen["tracestate"] == "app=1" and c.trace_state == "app=1"
        # The server proxy's sampling rate is 0: it honoured the caller's decision.
        ca, sa = attrs(c), attrs(s)
        assert ca["http.request.method"] == "GET" and ca["url.path"] == "/items"
        assert ca["http.response.status_code"] == 200 and ca["upstream_cluster"] == "mesh"
        assert ca["network.protocol.version"] == "1.1"
        assert sa["network.protocol.version"] == ("2" if protocol == "http2" else "1.1")
        assert sa["tulle.peer.identity"] == CLIENT_ID
        assert sa["guid:x-request-id"] == ca["guid:x-request-id"] == seen["x-request-id"]
        assert s.start_time_unix_nano >= c.start_time_unix_nano
        assert s.end_time_unix_nano <= c.end_time_unix_nano
        assert c.status.code == s.status.code == trace_pb2.Status.STATUS_CODE_UNSET
        # The exporter counts what the collector took (after its answer: bounded wait).
        for _ in range(500):
            if client.metric("tulle_proxy_trace_spans_total", result="exported") >= 1:
                break
            await asyncio.sleep(0.01)
        assert client.metric("tulle_proxy_trace_spans_total", result="exported") == 1
        assert client.metric("tulle_proxy_trace_spans_total", result="dropped") == 0


async def test_a_request_without_context_starts_a_trace_at_the_client_proxy() -> None:
    async with running_receiver() as receiver, traced_mesh(receiver) as (client, _):
        _, seen = await get(client.url("out", "/"))
        version, trace_id, parent, flags = seen["traceparent"].split("-")
        assert (version, flags) == ("00", "01")
        spans = dict(await wait_spans(receiver, trace_id, 2))
        assert spans["client"].parent_span_id == b""  # the root
        assert spans["server"].parent_span_id == spans["client"].span_id
        assert parent == spans["server"].span_id.hex()


async def test_the_callers_not_sampled_is_honoured_end_to_end() -> None:
    everything = {"sampling_percent": 100}
    async with running_receiver() as receiver, traced_mesh(
            receiver, client_tracing=everything, server_tracing=everything) as (client, _):
        unsampled = "1" * 32
        _, seen = await get(client.url("out", "/"), {
            "traceparent": f"00-{unsampled}-{APP_SPAN}-00"})
        version, trace_id, _, flags = seen["traceparent"].split("-")
        assert (trace_id, flags) == (unsampled, "00")  # propagated, not sampled
        # A sampled request after it: once its spans arrived, the earlier ones would have.
        _, seen = await get(client.url("out", "/"), {
            "traceparent": f"00-{TRACE}-{APP_SPAN}-01"})
        await wait_spans(receiver, TRACE, 2)
        assert unsampled not in spans_of(receiver)


async def test_b3_written_by_the_client_proxy_is_continued_by_the_server_proxy() -> None:
    async with running_receiver() as receiver, traced_mesh(
            receiver, client_tracing={"sampling_percent": 0, "propagation": ["b3multi"]},
            server_tracing={"sampling_percent": 0, "propagation": ["b3", "w3c"]}) as (
            client, _):
        _, seen = await get(client.url("out", "/"), {
            "x-b3-traceid": TRACE[16:], "x-b3-spanid": APP_SPAN, "x-b3-sampled": "1"})
        trace_id = "0" * 16 + TRACE[16:]  # a 64-bit B3 trace id, padded
        spans = dict(await wait_spans(receiver, trace_id, 2))
        c, s = spans["client"], spans["server"]
        assert c.parent_span_id.hex() == APP_SPAN and s.parent_span_id == c.span_id
        assert seen["b3"] == f"{trace_id}-{s.span_id.hex()}-1-{c.span_id.hex()}"
        assert seen["traceparent"] == f"00-{trace_id}-{s.span_id.hex()}-01"
        # The client proxy wrote x-b3-* (replacing the app's); the server proxy passed them.
        assert seen["x-b3-spanid"] == c.span_id.hex()


async def test_an_error_answer_makes_an_error_span() -> None:
    async with running_receiver() as receiver, traced_mesh(receiver) as (client, server):
        await server.server.close()  # the server proxy is gone: the client proxy answers 503
        async with aiohttp.ClientSession() as s, s.get(client.url("out", "/"), headers={
                "traceparent": f"00-{TRACE}-{APP_SPAN}-01"}) as r:
            assert r.status == 503
        [(_, c)] = await wait_spans(receiver, TRACE, 1)
        assert c.status.code == trace_pb2.Status.STATUS_CODE_ERROR
        assert c.status.message == "UF"
        assert attrs(c)["response_flags"] == "UF"


async def _raw_get(port: int, extra: bytes) -> tuple[bytes, bytes]:
    """One HTTP/1.1 request from a raw peer: (status line, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nhost: app\r\nconnection: close\r\n" + extra + b"\r\n")
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0], body


_HOSTILE = [
    b"traceparent: 00-" + TRACE.encode() + b"-" + APP_SPAN.encode() + b"-01" + b"x" * 6000
    + b"\r\n",
    b"traceparent: ff-" + TRACE.encode() + b"-" + APP_SPAN.encode() + b"-01\r\n",
    b"traceparent: 00-" + b"0" * 32 + b"-" + APP_SPAN.encode() + b"-01\r\n",
    b"traceparent: 00-" + TRACE.encode() + b"-" + b"0" * 16 + b"-01\r\n",
    b"traceparent: 00-" + TRACE.upper().encode() + b"-" + APP_SPAN.encode() + b"-01\r\n",
    b"traceparent: \xff\xfe-\x80\r\nb3: \xc3\xa9\r\n",
    b"b3: " + TRACE.encode() + b"-" + APP_SPAN.encode() + b"-1-" + b"9" * 400 + b"\r\n",
    b"x-b3-traceid: " + b"f" * 5000 + b"\r\nx-b3-spanid: zz\r\n",
    b"traceparent: garbage\r\ntracestate: " + b",".join(b"k%d=v" % i for i in range(500))
    + b"\r\n",
    b"".join(b"tracestate: a%d=b\r\n" % i for i in range(90)),
]


async def test_hostile_trace_headers_start_a_new_trace_and_the_listener_keeps_serving() -> None:
    import json

    async with running_receiver() as receiver, traced_mesh(receiver) as (client, _):
        port = client.port("out")
        for extra in _HOSTILE:
            status, body = await _raw_get(port, extra)
            assert status == b"HTTP/1.1 200 OK", (extra[:60], status)
            seen = json.loads(body)
            version, trace_id, parent, flags = seen["traceparent"].split("-")
            assert (version, len(trace_id), len(parent)) == ("00", 32, 16)
            assert trace_id != TRACE and trace_id != "0" * 32, extra[:60]
            assert len(seen["tracestate"]) <= 512
        # A header split by CR alone is a protocol error (400 by the parser), never a header
        # of ours; the listener goes on serving.
        for bad in (b"\rx: y", b"\x00", b"\nx-b3-sampled: 1"):
            status, _ = await _raw_get(port, b"traceparent: 00-" + TRACE.encode() + bad + b"\r\n")
            assert status.startswith(b"HTTP/1.1 400"), bad
        status, _ = await _raw_get(port, b"")
        assert status == b"HTTP/1.1 200 OK"
