"""gRPC end to end through the proxy with real grpcio on both sides (h2c listener, HTTP/2
cluster): unary, bidirectional streaming, error statuses passed through unchanged, and the
proxy's own UNAVAILABLE when the upstream is down."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest
from tests.support.grpc_peers import NOT_FOUND_DETAILS, bidi, running_grpc_server, unary
from tests.support.proxy import free_port, running_proxy, simple_config


@pytest.fixture
def grpc_port() -> Iterator[int]:
    with running_grpc_server() as port:
        yield port


def grpc_config(port: int) -> dict[str, object]:
    return simple_config(port, protocol="http2", cluster_protocol="http2")


async def test_unary_call_through_the_proxy(grpc_port: int) -> None:
    async with running_proxy(grpc_config(grpc_port)) as p:
        with grpc.insecure_channel(f"127.0.0.1:{p.port()}") as ch:
            assert await asyncio.to_thread(unary, ch, b"hello") == b"echo:hello"
            assert await asyncio.to_thread(unary, ch, b"x" * 1_000_000) == b"echo:" + b"x" * 1_000_000
        assert p.metric("tulle_proxy_requests_total", response_code="200") == 2


async def test_bidi_streaming_of_100_messages(grpc_port: int) -> None:
    async with running_proxy(grpc_config(grpc_port)) as p:
        msgs = [b"m%03d" % i for i in range(100)]
        with grpc.insecure_channel(f"127.0.0.1:{p.port()}") as ch:
            got = await asyncio.to_thread(bidi, ch, msgs)
        assert got == [b"echo:" + m for m in msgs]


async def test_server_error_status_reaches_the_client_unchanged(grpc_port: int) -> None:
    async with running_proxy(grpc_config(grpc_port)) as p:
        with grpc.insecure_channel(f"127.0.0.1:{p.port()}") as ch, \
                pytest.raises(grpc.RpcError) as err:
            await asyncio.to_thread(unary, ch, b"missing")
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
        assert err.value.details() == NOT_FOUND_DETAILS


async def test_upstream_down_is_unavailable() -> None:
    async with running_proxy(grpc_config(free_port())) as p:
        with grpc.insecure_channel(f"127.0.0.1:{p.port()}") as ch, \
                pytest.raises(grpc.RpcError) as err:
            await asyncio.to_thread(unary, ch, b"hello")
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE
        assert "cannot connect" in (err.value.details() or "")
        assert p.metric("tulle_proxy_requests_total", response_flags="UF") == 1
