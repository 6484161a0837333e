"""Line sinks on their own: stdout, a file that cannot be opened, a renderer that raises, the
queue bound, close flushing what is queued."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tulle.dataplane.telemetry.logformat import render_json
from tulle.dataplane.telemetry.sinks import LineSink
from tulle.proxyconfig.logs import LogSink


async def _until(cond: Any) -> None:
    async with asyncio.timeout(5):
        while not cond():
            await asyncio.sleep(0.005)


async def test_stdout_lines(capfd: pytest.CaptureFixture[str]) -> None:
    sink = LineSink("access_log", LogSink(flush_interval_ms=10), render_json)
    sink.start()
    assert sink.offer({"a": 1}, 0) and sink.offer({"b": "x\ny"}, 0)
    await _until(lambda: sink.stats.written == 2)
    await sink.close()
    out = capfd.readouterr().out.splitlines()
    assert [json.loads(line) for line in out] == [{"a": 1}, {"b": "x\ny"}]


async def test_an_unwritable_file_counts_failures_and_keeps_trying(tmp_path: Path) -> None:
    path = tmp_path / "missing-dir" / "a.log"
    sink = LineSink("flow_log", LogSink(kind="file", path=str(path), flush_interval_ms=10),
                    render_json)
    sink.start()
    sink.offer({"n": 1}, 0)
    await _until(lambda: sink.stats.failed == 1)
    path.parent.mkdir()
    sink.offer({"n": 2}, 0)
    await _until(lambda: sink.stats.written == 1)
    await sink.close()
    assert path.read_text() == '{"n":2}\n'


async def test_a_renderer_that_raises_loses_only_its_record(tmp_path: Path) -> None:
    def render(r: Any) -> str:
        if r.get("bad"):
            raise RuntimeError("bug")
        return render_json(r)

    path = tmp_path / "a.log"
    sink = LineSink("access_log", LogSink(kind="file", path=str(path), flush_interval_ms=10),
                    render)
    sink.start()
    for rec in ({"n": 1}, {"bad": True}, {"n": 3}):
        sink.offer(rec, 0)
    await _until(lambda: sink.stats.written == 2)
    await sink.close()
    assert sink.stats.failed == 1 and path.read_text().splitlines() == ['{"n":1}', '{"n":3}']


async def test_the_queue_is_bounded_and_close_flushes(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    sink = LineSink("access_log", LogSink(kind="file", path=str(path), queue_size=3,
                                          flush_interval_ms=60_000), render_json)
    # Not started: nothing drains the queue.
    assert [sink.offer({"n": i}, 0) for i in range(5)] == [True, True, True, False, False]
    assert (sink.stats.offered, sink.stats.dropped) == (5, 2)
    sink.start()
    await sink.close()  # writes what is queued, then stops
    assert path.read_text().splitlines() == ['{"n":0}', '{"n":1}', '{"n":2}']
    assert not sink.offer({"n": 9}, 0)
