"""The log sinks under trouble, through a real proxy: a stalled sink never blocks a request
(bounded queue, drops counted in /metrics), a rotated file is reopened, and access logs go to
a real OTLP receiver as OTLP log records."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import aiohttp
import pytest
from tests.support.logsink import log_config, read_records
from tests.support.otlp_receiver import running_receiver
from tests.support.proxy import running_proxy, simple_config

from tulle.dataplane.telemetry import sinks

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_a_stalled_sink_never_blocks_requests(origin: int, tmp_path: Path) -> None:
    fifo = tmp_path / "stalled"
    os.mkfifo(fifo)  # nobody reads it: the writer thread blocks opening it
    cfg = simple_config(origin)
    cfg["telemetry"] = {"access_log": log_config(fifo, sink={
        "kind": "file", "path": str(fifo), "queue_size": 5, "flush_interval_ms": 10})}
    async with running_proxy(cfg) as p, aiohttp.ClientSession() as s:
        async with asyncio.timeout(20):  # 50 requests, the sink stuck all along
            for _ in range(50):
                async with s.get(p.url(path="/echo")) as r:
                    assert r.status == 200
        assert p.metric("tulle_proxy_log_records_total", log="access_log", outcome="offered") == 50
        dropped = p.metric("tulle_proxy_log_records_total", log="access_log", outcome="dropped")
        # At most the queue (5) and the batch the thread took before it blocked (5) are held.
        assert 40 <= dropped <= 45
        assert p.metric("tulle_proxy_log_records_total", log="access_log", outcome="written") == 0
        # Unstick it (so the thread can end): what it held arrives.
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            async with asyncio.timeout(10):
                while p.metric("tulle_proxy_log_records_total", log="access_log",
                               outcome="written") < 50 - dropped:
                    await asyncio.sleep(0.01)
        finally:
            os.close(reader)


async def test_a_rotated_file_is_reopened(origin: int, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # Look at the path before every write (the default: at most once a second).
    monkeypatch.setattr(sinks, "REOPEN_CHECK", 0.0)
    log = tmp_path / "access.log"
    cfg = simple_config(origin)
    cfg["telemetry"] = {"access_log": log_config(log)}
    async with running_proxy(cfg) as p, aiohttp.ClientSession() as s:
        async with s.get(p.url(path="/echo?n=1")) as r:
            assert r.status == 200
        (first,) = await read_records(log, 1)
        log.rename(tmp_path / "access.log.1")  # logrotate's default: move, expect a new file
        async with s.get(p.url(path="/echo?n=2")) as r:
            assert r.status == 200
        (second,) = await read_records(log, 1)
    assert first["path"] == "/echo?n=1" and second["path"] == "/echo?n=2"
    assert (tmp_path / "access.log.1").read_text().count("\n") == 1


async def test_access_logs_into_a_real_otlp_receiver(origin: int) -> None:
    async with running_receiver() as rx:
        cfg = simple_config(origin)
        cfg["node"] = {"name": "web-0", "namespace": "shop", "service": "web"}
        cfg["telemetry"] = {"access_log": {"sink": {"kind": "otlp", "endpoint": rx.url,
                                                    "flush_interval_ms": 10}}}
        async with running_proxy(cfg) as p, aiohttp.ClientSession() as s:
            headers = {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01", "x-request-id": "r1"}
            async with s.get(p.url(path="/echo"), headers=headers) as r:
                assert r.status == 200
            async with s.get(p.url(path="/status/503")) as r:
                assert r.status == 503
            async with asyncio.timeout(10):
                while sum(len(sl.log_records) for e in rx.exports if e.message is not None
                          for rl in e.message.resource_logs for sl in rl.scope_logs) < 2:
                    await rx.wait_for(len(rx.exports) + 1)
            async with asyncio.timeout(10):  # counted once the receiver's answer is read
                while (written := p.metric("tulle_proxy_log_records_total", log="access_log",
                                           outcome="written")) < 2:
                    await asyncio.sleep(0.01)
    export = rx.exports[0]
    assert export.path == "/v1/logs"
    rl = export.message.resource_logs[0]
    resource = {a.key: a.value.string_value for a in rl.resource.attributes}
    assert resource["service.name"] == "web" and resource["service.namespace"] == "shop"
    records = [r for e in rx.exports for rl in e.message.resource_logs
               for sl in rl.scope_logs for r in sl.log_records]
    assert rl.scope_logs[0].scope.name == "tulle.access_log"
    ok, failed = records[0], records[1]
    attrs = {a.key: a.value for a in ok.attributes}
    assert attrs["method"].string_value == "GET" and attrs["path"].string_value == "/echo"
    assert attrs["response_code"].int_value == 200
    assert attrs["response_flags"].string_value == "-"
    assert attrs["request_id"].string_value == "r1"
    assert "response_code_details" not in attrs  # null fields are left out
    assert ok.trace_id.hex() == TRACE
    assert ok.time_unix_nano > 0 and ok.observed_time_unix_nano >= ok.time_unix_nano
    assert ok.event_name == "tulle.access_log" and ok.severity_text == "INFO"
    assert {a.key: a.value for a in failed.attributes}["response_code"].int_value == 503
    assert written == 2


async def test_a_stalled_collector_never_blocks_requests(origin: int) -> None:
    async with running_receiver() as rx:
        rx.stall = asyncio.Event()  # the collector takes the first batch and never answers
        cfg = simple_config(origin)
        cfg["telemetry"] = {"access_log": {"sink": {
            "kind": "otlp", "endpoint": rx.url, "queue_size": 5, "flush_interval_ms": 10}}}
        async with running_proxy(cfg) as p, aiohttp.ClientSession() as s:
            async with asyncio.timeout(20):
                for _ in range(40):
                    async with s.get(p.url(path="/echo")) as r:
                        assert r.status == 200
            metric = p.metric
            assert metric("tulle_proxy_log_records_total", log="access_log",
                          outcome="offered") == 40
            # At most the queue (5) and the batch in flight (5) are held; the rest dropped.
            assert 30 <= metric("tulle_proxy_log_records_total", log="access_log",
                                outcome="dropped") <= 35
            assert metric("tulle_proxy_log_records_total", log="access_log",
                          outcome="written") == 0
            rx.stall.set()
