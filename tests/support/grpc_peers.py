"""A real grpcio server and client helpers for tests, without code generation.

Methods use generic handlers with bytes in and bytes out (no protobuf):

    /tulle.test.Echo/Unary   returns b"echo:" + request; b"missing" aborts with NOT_FOUND
    /tulle.test.Echo/Bidi    answers every message with b"echo:" + message, in order
    /tulle.test.Echo/Who     returns the server's `name` (which server answered: route tests)
    /tulle.test.Admin/Who    the same, under another service name (service matches)

The server runs on grpcio's own threads (insecure, 127.0.0.1, port 0) so that a blocking
grpcio client (run with `asyncio.to_thread`) and the in-loop proxy never wait on each other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent import futures

import grpc

SERVICE = "tulle.test.Echo"
ADMIN = "tulle.test.Admin"
NOT_FOUND_DETAILS = "no such thing: caf\u00e9 100%"


def _identity(b: bytes) -> bytes:
    return b


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    if request == b"missing":
        context.abort(grpc.StatusCode.NOT_FOUND, NOT_FOUND_DETAILS)
    return b"echo:" + request


def _bidi(requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
    for r in requests:
        yield b"echo:" + r


@contextlib.contextmanager
def running_grpc_server(name: str = "") -> Iterator[int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    name_bytes = name.encode()

    def who(request: bytes, context: grpc.ServicerContext) -> bytes:
        return name_bytes

    who_handler = grpc.unary_unary_rpc_method_handler(
        who, request_deserializer=_identity, response_serializer=_identity)
    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(
            _unary, request_deserializer=_identity, response_serializer=_identity),
        "Bidi": grpc.stream_stream_rpc_method_handler(
            _bidi, request_deserializer=_identity, response_serializer=_identity),
        "Who": who_handler,
    })
    admin = grpc.method_handlers_generic_handler(ADMIN, {"Who": who_handler})
    server.add_generic_rpc_handlers((handler, admin))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None).wait(5)


def unary(channel: grpc.Channel, payload: bytes, timeout: float = 10) -> bytes:
    call = channel.unary_unary(f"/{SERVICE}/Unary", request_serializer=_identity,
                               response_deserializer=_identity)
    return call(payload, timeout=timeout)  # type: ignore[no-any-return]


def bidi(channel: grpc.Channel, payloads: list[bytes], timeout: float = 20) -> list[bytes]:
    call = channel.stream_stream(f"/{SERVICE}/Bidi", request_serializer=_identity,
                                 response_deserializer=_identity)
    return list(call(iter(payloads), timeout=timeout))


def who(channel: grpc.Channel, service: str = SERVICE,
        metadata: tuple[tuple[str, str], ...] = (), timeout: float = 10) -> str:
    """The name of the server that answered `/<service>/Who`."""
    call = channel.unary_unary(f"/{service}/Who", request_serializer=_identity,
                               response_deserializer=_identity)
    return call(b"", metadata=metadata, timeout=timeout).decode()  # type: ignore[no-any-return]
