"""Fuzz target: what the OTLP exporter reads of a collector's answer, against protobuf.

    .venv/bin/python -m fuzz.otlp_response -runs=100000

`rejected_count` (and the wire reader under it) must never raise on any bytes; when our reader
takes the whole body and the real protobuf runtime parses it as an ExportLogsServiceResponse,
both must read the same rejected count (differential: ours may refuse more, e.g. groups, and
then counts 0, never a different number).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

    from tulle.dataplane.telemetry.otlp import wire
    from tulle.dataplane.telemetry.otlp.exporter import rejected_count


def test_one_input(data: bytes) -> None:
    ours = rejected_count(data)
    assert ours >= 0
    try:
        wire.fields(data)
        inner = [v for n, t, v in wire.fields(data) if n == 1 and t == wire.LEN]
        for v in inner:
            assert isinstance(v, bytes)
            wire.fields(v)
    except ValueError:
        return
    msg = logs_service_pb2.ExportLogsServiceResponse()
    try:
        msg.ParseFromString(data)
    except DecodeError:
        return
    theirs = msg.partial_success.rejected_log_records
    assert ours == max(theirs, 0), (ours, theirs)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
