"""A control plane that goes away is one WARNING with the retry schedule, not one per retry;
coming back is one INFO line."""

from __future__ import annotations

import logging

import pytest

from tulle.dataplane.outage import OutageLog


def test_one_line_when_it_goes_one_when_it_returns(caplog: pytest.LogCaptureFixture) -> None:
    out = OutageLog(0.1, 5.0, 2)
    with caplog.at_level(logging.INFO, "tulle.agent"):
        for _ in range(20):
            out.failed("10.0.0.1:15680", "Connection refused", "v7")
        out.back("10.0.0.1:15680")
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(lines) == 2, lines
    level, first = lines[0]
    assert level == "WARNING"
    assert "10.0.0.1:15680 unreachable: Connection refused" in first
    assert "serving config v7" in first
    assert "from 0.1 s up to 5 s, full jitter, across 2 addresses" in first
    assert lines[1][0] == "INFO" and "connected again after" in lines[1][1]
    assert "(20 attempts)" in lines[1][1]


def test_a_new_reason_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    out = OutageLog(0.1, 5.0, 1)
    with caplog.at_level(logging.INFO, "tulle.agent"):
        out.failed("cp:1", "closed the stream", None)
        out.failed("cp:1", "Connection refused", None)
        out.failed("cp:1", "Connection refused", None)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2 and "no config yet" in msgs[0] and "across" not in msgs[0]
    assert msgs[1].endswith("still unreachable: Connection refused")
