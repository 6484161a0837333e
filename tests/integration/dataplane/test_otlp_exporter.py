"""The batching OTLP/HTTP poster against a real receiver and against hostile raw peers.

Batches are encoded here as a Resource whose attributes are the records, posted to
/v1/test (the exporter is generic over the signal; the access log tests send real
ExportLogsServiceRequests to /v1/logs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from tests.support.certs import self_signed
from tests.support.otlp_receiver import OtlpReceiver, running_receiver

from tulle.dataplane.telemetry.otlp.common import resource
from tulle.dataplane.telemetry.otlp.exporter import MAX_BODY, MAX_HEAD, OtlpExporter


def _encode(items: Sequence[int]) -> bytes:
    return bytes(resource({f"r{i}": i for i in items}))


def _records(receiver: OtlpReceiver) -> list[int]:
    out = []
    for _, body in receiver.raw:
        res = resource_pb2.Resource()
        res.ParseFromString(body)
        out += [a.value.int_value for a in res.attributes]
    return out


@pytest.fixture
async def receiver() -> AsyncIterator[OtlpReceiver]:
    async with running_receiver() as r:
        yield r


def _exporter(url: str, **kw: object) -> OtlpExporter[int]:
    opts: dict[str, object] = {"max_batch": 4, "flush_interval": 30.0, "timeout": 2.0,
                               "backoff_initial": 0.01, "backoff_max": 0.05}
    opts.update(kw)
    return OtlpExporter(url, "/v1/test", _encode, **opts)  # type: ignore[arg-type]


async def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


async def test_full_batches_go_at_once_the_rest_on_the_interval(receiver: OtlpReceiver) -> None:
    ex = _exporter(receiver.url, flush_interval=0.3)
    ex.start()
    for i in range(10):
        assert ex.offer(i)
    await receiver.wait_for(2, timeout=0.25)  # two full batches, before the interval
    await receiver.wait_for(3)                # the last 2 on the interval
    await _until(lambda: ex.stats.exported == 10)
    assert ex.stats.batches == 3 and ex.stats.dropped == 0 and ex.stats.failed == 0
    assert _records(receiver) == list(range(10))
    assert receiver.exports[0].path == "/v1/test"
    await ex.close()


async def test_records_arrive_in_order_over_one_connection(receiver: OtlpReceiver) -> None:
    ex = _exporter(receiver.url, max_batch=3)
    ex.start()
    for i in range(9):
        ex.offer(i)
    await _until(lambda: len(receiver.raw) == 3)
    assert _records(receiver) == list(range(9))
    await ex.close()


async def test_a_stalled_collector_never_blocks_offer_and_drops_are_counted(
        receiver: OtlpReceiver) -> None:
    receiver.stall = asyncio.Event()
    ex = _exporter(receiver.url, max_queue=8, max_batch=2, timeout=30.0)
    ex.start()
    for i in range(2):
        ex.offer(i)
    await _until(lambda: len(receiver.raw) == 1)  # the first batch hangs in the collector
    accepted = [ex.offer(i) for i in range(100)]   # synchronous: cannot block
    assert accepted.count(True) == 8 and accepted.count(False) == 92
    assert ex.stats.dropped == 92 and ex.pending == 8
    receiver.stall.set()
    await _until(lambda: ex.stats.exported == 10)
    await ex.close()


async def test_retryable_statuses_are_retried_with_backoff(receiver: OtlpReceiver) -> None:
    receiver.answers = [(503, {"Retry-After": "0"}, b""), (429, {}, b""), (502, {}, b"")]
    ex = _exporter(receiver.url)
    ex.start()
    for i in range(4):
        ex.offer(i)
    await _until(lambda: ex.stats.exported == 4)
    assert ex.stats.retries == 3 and ex.stats.failed == 0 and len(receiver.raw) == 4
    await ex.close()


async def test_permanent_errors_drop_the_batch_at_once(receiver: OtlpReceiver,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    receiver.answers = [(400, {}, b"bad")]
    ex = _exporter(receiver.url, headers=[("authorization", "Bearer s3cr3t-token")])
    ex.start()
    with caplog.at_level(logging.WARNING, "tulle.telemetry.otlp"):
        for i in range(4):
            ex.offer(i)
        await _until(lambda: ex.stats.failed == 4)
    assert ex.stats.retries == 0 and len(receiver.raw) == 1
    assert "HTTP 400" in caplog.text and "s3cr3t" not in caplog.text
    for i in range(4):  # and it goes on working
        ex.offer(i)
    await _until(lambda: ex.stats.exported == 4)
    assert receiver.exports[-1].headers["Authorization"] == "Bearer s3cr3t-token"
    await ex.close()


async def test_retries_give_up_after_max_retries() -> None:
    ex = _exporter("http://127.0.0.1:1", max_retries=2)  # nothing listens on port 1
    ex.start()
    for i in range(4):
        ex.offer(i)
    await _until(lambda: ex.stats.failed == 4)
    assert ex.stats.retries == 2
    await ex.close()


async def test_partial_success_is_counted(receiver: OtlpReceiver) -> None:
    resp = logs_service_pb2.ExportLogsServiceResponse()
    resp.partial_success.rejected_log_records = 3
    resp.partial_success.error_message = "too old"
    receiver.answers = [(200, {}, resp.SerializeToString())]
    ex = _exporter(receiver.url)
    ex.start()
    for i in range(4):
        ex.offer(i)
    await _until(lambda: ex.stats.exported == 4)
    assert ex.stats.rejected == 3
    await ex.close()


async def test_close_sends_what_is_queued(receiver: OtlpReceiver) -> None:
    ex = _exporter(receiver.url, max_batch=100)
    ex.start()
    for i in range(5):
        ex.offer(i)
    await ex.close()
    assert _records(receiver) == list(range(5)) and ex.stats.exported == 5
    assert not ex.offer(9) and ex.stats.dropped == 1


# -- hostile collectors: raw peers ----------------------------------------------------------

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_peer(behaviours: list[Behaviour]) -> AsyncIterator[tuple[str, list[int]]]:
    """A raw TCP server: connection n runs behaviours[n] (the last one repeats) per request
    read; yields its URL and the count of requests it read."""
    seen = [0]

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                b = behaviours[min(seen[0], len(behaviours) - 1)]
                seen[0] += 1
                await b(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.close()


async def _ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()


async def _huge_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nX: " + b"a" * (MAX_HEAD * 4))
    await writer.drain()
    await asyncio.sleep(30)


async def _endless_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
    for _ in range(64):
        writer.write(b"z" * 65536)
        await writer.drain()
    await asyncio.sleep(30)


async def _huge_length(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY * 100))
    await writer.drain()


async def _huge_chunk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffff\r\n")
    await writer.drain()


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
    await writer.drain()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(30)


async def _chunked_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n\x08\x01\r\n"
                 b"0\r\n\r\n")
    await writer.drain()


@pytest.mark.parametrize("bad", [_huge_head, _endless_body, _huge_length, _huge_chunk,
                                 _garbage, _silent])
async def test_a_hostile_collector_costs_one_batch_and_bounded_memory(bad: Behaviour) -> None:
    async with raw_peer([bad, _ok]) as (url, seen):
        ex = _exporter(url, max_retries=0, timeout=0.5)
        ex.start()
        for i in range(4):
            ex.offer(i)
        await _until(lambda: ex.stats.failed == 4)
        for i in range(4):  # the next batch goes through on a fresh connection
            ex.offer(i)
        await _until(lambda: ex.stats.exported == 4)
        assert seen[0] == 2
        await ex.close()


async def test_chunked_responses_and_keep_alive() -> None:
    async with raw_peer([_chunked_ok]) as (url, seen):
        ex = _exporter(url)
        ex.start()
        for i in range(12):
            ex.offer(i)
        await _until(lambda: ex.stats.exported == 12)
        assert seen[0] == 3 and ex.stats.failed == 0
        await ex.close()


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError):
        OtlpExporter("ftp://x", "/v1/logs", _encode)
    with pytest.raises(ValueError):
        OtlpExporter("http://x:1", "/v1/logs", _encode, headers=[("a", "b\r\nc: d")])
    with pytest.raises(ValueError):
        OtlpExporter("http://x:1", "/v1/logs", _encode, max_queue=0)


async def test_https_to_a_trusted_collector_and_a_refused_untrusted_one(tmp_path: Path) -> None:
    crt, key = self_signed(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(crt, key)
    async with running_receiver(server) as rx:
        trusting = ssl.create_default_context(cafile=crt)
        ex = _exporter(rx.url, ssl_context=trusting)
        ex.start()
        for i in range(4):
            ex.offer(i)
        await _until(lambda: ex.stats.exported == 4)
        await ex.close()
        assert _records(rx) == list(range(4))
        # The system's CAs do not know this certificate: the batch fails, nothing is sent.
        stranger = _exporter(rx.url, max_retries=0)
        stranger.start()
        for i in range(4):
            stranger.offer(i)
        await _until(lambda: stranger.stats.failed == 4)
        await stranger.close()
        assert len(rx.raw) == 1
