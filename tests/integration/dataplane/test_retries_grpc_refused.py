"""Retries through a real proxy on what only HTTP/2 and gRPC say: a listed gRPC status in a
trailers-only answer, and a stream the upstream refused (RST_STREAM REFUSED_STREAM); and what
the client gets when a cluster limit refuses a retry after its backoff (ADR 0048)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tests.integration.dataplane.test_retries import ask, retrying
from tests.support.h2peers import H2Client, running_h2_origin
from tests.support.proxy import running_proxy, simple_config
from tests.support.rawservers import RawServer, raw_server

from tulle.dataplane.http import retry as retry_module

GRPC = [(b"content-type", b"application/grpc"), (b"te", b"trailers")]


def h2_retrying(port: int, retry: dict[str, Any]) -> dict[str, Any]:
    cfg = simple_config(port, protocol="http2", cluster_protocol="http2")
    r = {"num_retries": 2, "backoff_base_ms": 1, "backoff_max_ms": 2, **retry}
    cfg["route_tables"][0]["virtual_hosts"][0]["rules"][0]["retry"] = r
    return cfg


async def test_a_listed_grpc_status_is_retried_though_every_call_is_a_post() -> None:
    async with running_h2_origin() as (port, origin):
        origin.script = ["grpc-14", "grpc-14"]
        cfg = h2_retrying(port, {"retry_on": ["retriable-grpc-statuses"],
                                 "grpc_statuses": [14]})
        async with running_proxy(cfg) as p:
            c = await H2Client.connect(p.port())
            resp = await c.request("POST", "/script", GRPC, body=b"\x00\x00\x00\x00\x00")
            c.close()
            assert (resp.status, resp.trailers) == (200, [(b"grpc-status", b"0")])
            assert origin.scripted == 3  # two UNAVAILABLE answers, then the OK
            assert p.metric("tulle_proxy_upstream_retries_total", reason="grpc-14") == 2


async def test_an_unlisted_grpc_status_reaches_the_client_after_one_try() -> None:
    async with running_h2_origin() as (port, origin):
        origin.script = ["grpc-5"]
        cfg = h2_retrying(port, {"retry_on": ["retriable-grpc-statuses"],
                                 "grpc_statuses": [14]})
        async with running_proxy(cfg) as p:
            c = await H2Client.connect(p.port())
            resp = await c.request("POST", "/script", GRPC, body=b"\x00\x00\x00\x00\x00")
            c.close()
            assert resp.header(b"grpc-status") == b"5" and origin.scripted == 1
            assert p.metric("tulle_proxy_upstream_retries_total") == 0


@pytest.mark.parametrize("retry_on", [["refused-stream"], ["5xx"]])
async def test_a_refused_stream_is_retried_even_for_a_post(retry_on: list[str]) -> None:
    async with running_h2_origin() as (port, origin):
        origin.script = ["refuse"]
        async with running_proxy(h2_retrying(port, {"retry_on": retry_on})) as p:
            c = await H2Client.connect(p.port())
            resp = await c.request("POST", "/script", GRPC, body=b"\x00\x00\x00\x00\x00")
            c.close()
            assert resp.status == 200 and resp.trailers == [(b"grpc-status", b"0")]
            assert origin.scripted == 2
            assert p.metric("tulle_proxy_upstream_retries_total", reason="UC") == 1


async def test_without_refused_stream_in_retry_on_the_refusal_reaches_the_client() -> None:
    async with running_h2_origin() as (port, origin):
        origin.script = ["refuse"]
        async with running_proxy(h2_retrying(port, {"retry_on": ["connect-failure"]})) as p:
            c = await H2Client.connect(p.port())
            resp = await c.request("POST", "/script", GRPC, body=b"\x00\x00\x00\x00\x00")
            c.close()
            assert resp.header(b"grpc-status") != b"0" and origin.scripted == 1


async def test_a_retry_refused_by_a_limit_after_its_backoff_answers_the_failure_it_retried(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`max_requests` 1: request A gets a 502 and waits out a backoff of exactly 1 s (the
    jitter pinned to its cap); meanwhile B takes the one request slot (its origin holds it);
    A's retry is refused at the limit: A is answered the 502 it retried, flagged `UO`, not a
    bare 503 that would hide what failed."""
    monkeypatch.setattr(retry_module.random, "random", lambda: 1.0)
    release = asyncio.Event()

    async def origin(srv: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while True:
            srv.requests.append(await r.readuntil(b"\r\n\r\n"))
            if len(srv.requests) == 1:
                w.write(b"HTTP/1.1 502 X\r\ncontent-length: 4\r\n\r\nbad\n")
                continue
            await release.wait()
            w.write(b"HTTP/1.1 200 X\r\ncontent-length: 3\r\n\r\nok\n")

    async with raw_server(origin) as srv:
        cfg = retrying([srv.port], {"retry_on": ["gateway-error"], "backoff_base_ms": 1000,
                                    "backoff_max_ms": 1000})
        cfg["clusters"][0]["limits"] = {"max_requests": 1}
        async with running_proxy(cfg) as p:
            a = asyncio.ensure_future(ask(p, path=b"/a"))
            for _ in range(300):
                if p.metric("tulle_proxy_upstream_retries_total") == 1:
                    break
                await asyncio.sleep(0.01)
            b = asyncio.ensure_future(ask(p, path=b"/b"))
            status, body = await a
            assert status == 502, body
            assert b"upstream answered 502" in body and b"its retry refused" in body
            assert len(srv.requests) == 2  # A's first try and B: A's retry never left
            release.set()
            assert (await b)[0] == 200
            assert p.metric("tulle_proxy_requests_total", response_code="502",
                            response_flags="UO") == 1
            assert p.metric("tulle_proxy_upstream_overflow_total", limit="requests") == 1
