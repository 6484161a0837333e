"""The per-key refusal log: every kind of refusal of each workload logged at once, a retry
loop bounded to one line per interval with the count it stands for."""

from __future__ import annotations

import logging

import pytest

from tulle.controlplane.push import limits
from tulle.controlplane.push.limits import _Budget, _ThrottledByKey


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


async def test_first_refusal_of_each_key_at_once_then_one_line_per_interval(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.WARNING)
    log = _ThrottledByKey()
    for _ in range(3):
        log(("shop/a", "address"), "proxy %s refused: %s", "shop/a", "address")
    log(("shop/a", "labels"), "proxy %s refused: %s", "shop/a", "labels")
    assert _lines(caplog) == ["proxy shop/a refused: address", "proxy shop/a refused: labels"]
    monkeypatch.setattr(limits, "REFUSAL_LOG_INTERVAL", 0.0)  # the interval has passed
    log(("shop/a", "address"), "proxy %s refused: %s", "shop/a", "address")
    assert _lines(caplog)[-1] == "proxy shop/a refused: address (2 more since the last line)"


async def test_keys_are_bounded(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    log = _ThrottledByKey(max_keys=2)
    for i in range(5):
        log((str(i),), "refused %s", i)
    assert len(log._seen) <= 2
    assert len(_lines(caplog)) == 5


async def test_the_budget_refills_each_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    budget = _Budget(2)
    assert [budget.take() for _ in range(3)] == [True, True, False]
    monkeypatch.setattr(limits, "REFUSAL_LOG_INTERVAL", 0.0)  # the interval has passed
    assert budget.take()
