"""The golden metrics and spans against what the client actually got (audit ADR 0107): known
gRPC outcomes driven through a real proxy from a raw HTTP/2 client, each call's wire answer
(the `grpc-status` in its trailers-only head or its trailers, or the RST_STREAM that ended it)
compared with the `grpc_response_status` label the proxy counted it under and the span it
exported."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from opentelemetry.proto.trace.v1 import trace_pb2
from tests.integration.dataplane.test_tracing import attrs, spans_of
from tests.support.h2peers import H2Client, H2Response, running_h2_origin
from tests.support.otlp_receiver import OtlpReceiver, running_receiver
from tests.support.proxy import RunningProxy, running_proxy

from tulle.dataplane.telemetry.summary import Summarizer

GRPC = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]
MESSAGE = b"\x00\x00\x00\x00\x03abc"


def _rule(prefix: str, *filters: dict[str, Any]) -> dict[str, Any]:
    return {"matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
            "backends": [{"cluster": "grpc"}], "filters": list(filters)}


@asynccontextmanager
async def grpc_proxy(service: bool = False) -> AsyncIterator[tuple[RunningProxy, H2Client, Any]]:
    """An h2c proxy with golden metrics in front of the scripted HTTP/2 origin: `/fault`
    aborts with grpc-status 7, `/limited` allows one call a minute, the rest goes through.
    `service`: the node is workload `shop/a-0` and the cluster Service `shop/api` (what the
    stats summary needs to name a row)."""
    async with running_h2_origin() as (port, origin):
        cluster: dict[str, Any] = {"name": "grpc", "protocol": "http2",
                                   "endpoints": [{"address": "127.0.0.1", "port": port}]}
        cfg: dict[str, Any] = {
            "listeners": [{"name": "out", "port": 0, "protocol": "http2", "route_table": "rt"}],
            "clusters": [cluster],
            "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": [
                _rule("/fault", {"type": "FaultInjection", "abort": {"grpc_status": 7}}),
                _rule("/limited", {"type": "RateLimit",
                                   "local": {"requests": 1, "interval_ms": 60_000}}),
                _rule("/")]}]}],
            "telemetry": {"metrics": {}},
        }
        if service:
            cfg["node"] = {"name": "a-0", "namespace": "shop"}
            cluster["metadata"] = {"service": "api", "namespace": "shop"}
        async with running_proxy(cfg) as p:
            client = await H2Client.connect(p.port())
            try:
                yield p, client, origin
            finally:
                client.close()


async def call(client: H2Client, path: str) -> H2Response:
    return await asyncio.wait_for(client.request("POST", path, GRPC, body=MESSAGE), 5)


def wire_status(r: H2Response) -> bytes | None:
    """The grpc-status the client got: in the trailers, or in a trailers-only head."""
    return dict(r.trailers).get(b"grpc-status") or dict(r.headers).get(b"grpc-status")


def counted(p: RunningProxy, **labels: str) -> float:
    return p.metric("istio_requests_total", request_protocol="grpc", **labels)


async def test_a_local_answers_grpc_status_is_the_one_sent() -> None:
    """A fault's `grpc_status` and a rate limit's RESOURCE_EXHAUSTED went out on the wire but
    were counted as gRPC's mapping of the HTTP status behind them (UNAVAILABLE for both)."""
    async with grpc_proxy() as (p, client, _):
        fault = await call(client, "/fault/x")
        assert (fault.status, wire_status(fault)) == (200, b"7")
        assert (await call(client, "/limited/script")).status == 200
        limited = await call(client, "/limited/script")
        assert (limited.status, wire_status(limited)) == (200, b"8")
        assert counted(p, grpc_response_status="7", response_flags="FI") == 1
        assert counted(p, grpc_response_status="8", response_flags="RL") == 1
        assert counted(p, grpc_response_status="14") == 0


async def cancel_held_call(p: RunningProxy, client: H2Client, origin: Any) -> None:
    """A call the origin holds, cancelled by the client (RST_STREAM CANCEL); returns once the
    proxy counted it (`DC`)."""
    origin.release.clear()
    sid, _ = client.start("POST", "/hold", GRPC, end_stream=False)
    await client.send_body(sid, MESSAGE, end=False)
    for _ in range(200):  # bounded: until the origin holds the call
        if origin.held_bytes:
            break
        await asyncio.sleep(0.01)
    before = counted(p, response_flags="DC")
    client.reset(sid)  # the caller cancels
    for _ in range(300):
        if counted(p, response_flags="DC") > before:
            break
        await asyncio.sleep(0.01)


async def test_a_call_that_ended_without_a_grpc_status_is_not_counted_ok() -> None:
    """A call whose stream was reset after its head (the upstream reset it: the client saw
    RST_STREAM, INTERNAL to its gRPC library) or cancelled by the client had no grpc-status
    at all, and was counted as `0` (OK) because its HTTP status was 200."""
    async with grpc_proxy() as (p, client, origin):
        reset = await call(client, "/reset")
        assert reset.reset_code == 2 and wire_status(reset) is None  # INTERNAL_ERROR
        await cancel_held_call(p, client, origin)
        ok = await call(client, "/script")
        assert wire_status(ok) == b"0"
        assert counted(p, grpc_response_status="0") == 1  # only the call that got OK
        assert counted(p, grpc_response_status="13", response_flags="UC") == 1
        assert counted(p, grpc_response_status="1", response_flags="DC") == 1



async def test_stat_fails_the_calls_the_golden_metrics_count_not_ok() -> None:
    """ADR 0112: what a proxy reports for `tulle stat` counts a gRPC call failed exactly when
    the golden metrics count it under a `grpc_response_status` other than 0, whatever ended
    it: a status in trailers or a trailers-only head, a local answer with an HTTP error
    status (a fault's 503) or not (a rate limit's 429), a reset after the head, a client's
    cancel, a plain 503 to a gRPC call.  A plain HTTP/2 request answered the same way as a
    failed call is not a call: it is judged by its HTTP status, as before."""
    async with grpc_proxy(service=True) as (p, client, origin):
        origin.script += ["ok", "after-14", "grpc-5", "503"]
        for _ in range(4):
            await call(client, "/script")
        assert wire_status(await call(client, "/fault/x")) == b"7"  # local 503
        await call(client, "/limited/x")  # the origin's echo: a 200 without grpc-status
        assert wire_status(await call(client, "/limited/x")) == b"8"  # local 429
        assert (await call(client, "/reset")).reset_code == 2
        await cancel_held_call(p, client, origin)
        origin.script.append("grpc-5")
        plain = await asyncio.wait_for(client.request("POST", "/script", body=MESSAGE), 5)
        assert (plain.status, wire_status(plain)) == (200, b"5")  # not a gRPC request
        calls = counted(p)
        not_ok = calls - counted(p, grpc_response_status="0")
        assert (calls, not_ok) == (9, 8)
        (row,) = Summarizer(p.server.metrics).report(p.server.config)
        assert row.requests == calls + 1
        # 503 (fault), 503 (origin), 0 (cancel) by their HTTP status; 14, 5, 8 (429), 13
        # (the echo without a status), 13 (reset) by their gRPC status.
        assert (row.failures, row.grpc_failures) == (3, 5)
        assert row.failures + row.grpc_failures == not_ok


async def test_a_failed_grpc_call_makes_an_error_span_with_its_status() -> None:
    """A gRPC call fails with HTTP 200 and a non-OK grpc-status, so spans judged by the HTTP
    status alone were never errors: a trace search for errors missed every failed call.  Now
    the span carries `rpc.grpc.status_code` (the status the metrics count) and is an error as
    OpenTelemetry's gRPC conventions say: on a CLIENT span any non-OK status, on a SERVER
    span only the server's faults (INTERNAL yes, NOT_FOUND no)."""
    async with running_receiver() as receiver, running_h2_origin() as (port, origin):
        cfg = {
            "listeners": [
                {"name": "out", "port": 0, "protocol": "http2", "route_table": "rt"},
                {"name": "in", "port": 0, "protocol": "http2", "direction": "inbound",
                 "route_table": "rt"}],
            "clusters": [{"name": "grpc", "protocol": "http2",
                          "endpoints": [{"address": "127.0.0.1", "port": port}]}],
            "route_tables": [{"name": "rt", "virtual_hosts": [{"name": "any", "rules": [
                _rule("/")]}]}],
            "telemetry": {"tracing": {"otlp_endpoint": receiver.url, "sampling_percent": 100}},
        }
        async with running_proxy(cfg) as p:
            got: dict[tuple[str, str], trace_pb2.Span] = {}
            seen: set[str] = set()
            for listener in ("out", "in"):
                client = await H2Client.connect(p.port(listener))
                try:
                    for script in ("ok", "grpc-5", "after-13"):
                        origin.script.append(script)
                        await call(client, "/script")
                        while not _spans(receiver).keys() - seen:  # bounded: wait_for's timeout
                            await receiver.wait_for(len(receiver.exports) + 1, timeout=10)
                        (key,) = _spans(receiver).keys() - seen
                        seen.add(key)
                        got[(listener, script)] = _spans(receiver)[key]
                finally:
                    client.close()
        error = trace_pb2.Status.STATUS_CODE_ERROR
        for (listener, script), span in got.items():
            code = {"ok": 0, "grpc-5": 5, "after-13": 13}[script]
            assert attrs(span)["rpc.grpc.status_code"] == code, (listener, script)
            failed = code == 13 or (code == 5 and listener == "out")
            assert (span.status.code == error) == failed, (listener, script)


def _spans(receiver: OtlpReceiver) -> dict[str, trace_pb2.Span]:
    return {span.span_id.hex(): span for spans in spans_of(receiver).values()
            for _, span in spans}
