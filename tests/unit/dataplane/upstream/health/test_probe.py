"""The gRPC health messages the probe writes and reads, byte for byte (protobuf by hand)."""

from __future__ import annotations

from tulle.dataplane.upstream.health.probe import grpc_request, grpc_status


def test_the_request_is_a_length_prefixed_health_check_request() -> None:
    assert grpc_request("") == b"\x00\x00\x00\x00\x00"
    assert grpc_request("shop.Api") == b"\x00\x00\x00\x00\x0a\x0a\x08shop.Api"
    long = "s" * 200  # a two-byte varint length
    assert grpc_request(long)[5:8] == b"\x0a\xc8\x01"


def test_the_answer_is_read_and_anything_else_is_refused() -> None:
    assert grpc_status(b"\x00\x00\x00\x00\x02\x08\x01") == 1  # SERVING
    assert grpc_status(b"\x00\x00\x00\x00\x02\x08\x02") == 2  # NOT_SERVING
    assert grpc_status(b"\x00\x00\x00\x00\x00") == 0  # UNKNOWN (the default, omitted)
    # an unknown length-delimited field before the status is skipped
    assert grpc_status(b"\x00\x00\x00\x00\x05\x12\x01x\x08\x01") == 1
    for bad in (b"", b"\x00\x00\x00\x00\x05\x08", b"\x01\x00\x00\x00\x02\x08\x01",
                b"\x00\x00\x00\x00\x03\x08\x01", b"\x00\x00\x00\x00\x02\x0d\x01",
                b"\x00\x00\x00\x00\x02\x08\xff"):
        assert grpc_status(bad) == -1, bad
