"""A real grpcio server speaking `grpc.health.v1.Health/Check` (protobuf bytes by hand, as
the messages are one field each), whose answers a test sets per service name."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent import futures

import grpc

SERVING, NOT_SERVING = 1, 2


def _identity(b: bytes) -> bytes:
    return b


def _service_of(request: bytes) -> str:
    if not request:
        return ""
    assert request[0] == 0x0A and request[1] < 0x80, request  # field 1, a short string
    return request[2:2 + request[1]].decode()


@contextlib.contextmanager
def running_health_server(statuses: dict[str, int]) -> Iterator[int]:
    """`statuses`: service name -> SERVING / NOT_SERVING; a name not in it is NOT_FOUND.
    The dict is read at each call, so a test changes answers by changing it."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))

    def check(request: bytes, context: grpc.ServicerContext) -> bytes:
        service = _service_of(request)
        if service not in statuses:
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return bytes([0x08, statuses[service]])

    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(
            check, request_deserializer=_identity, response_serializer=_identity)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None).wait(5)
